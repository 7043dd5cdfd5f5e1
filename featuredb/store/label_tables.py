"""What labelling, explaining and scoring read and write: the SQL of featuredb.labels, whose rules stay there.

- baseline labels (featuredb.labels.baseline): each feature's evidence, the model's generic logit tokens, the write;
- LLM explanations (featuredb.labels.explain): the features to explain and their stored examples;
- scoring (featuredb.labels.example_windows, embedding_score): the explanations to score, windows of their
  examples and the embeddings the search index already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from featuredb.labels.label_rule import USABLE_SQL
from featuredb.store.reads import Scope

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from featuredb.labels.example_windows import WindowSpec
    from featuredb.store.feature_store import FeatureStore

# --- baseline labels ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaselineEvidenceLimits:
    """How much evidence per feature the baseline query gathers (featuredb.labels.baseline's constants)."""

    max_peaks: int
    max_context: int
    max_phrase: int
    max_words: int
    max_topic: int
    context_before: int
    context_share: float
    word_share: float
    topic_share: float
    topic_lift: float
    z_effect: float


def generic_logit_tokens_by_model(con: duckdb.DuckDBPyConnection, scope: Scope, min_count: int,
                                  min_share: float) -> dict[str, list[str]]:
    """modelId -> tokens in the top-10 positive logits of at least max(min_count, min_share * n) of the model's
    n features in `scope`."""
    cond, params = scope.where()
    return dict(con.execute(f"""
        WITH t AS (SELECT "modelId", unnest(pos_str[1:10]) AS tok FROM features WHERE {cond}),
        n AS (SELECT "modelId", count(*) AS n FROM features WHERE {cond} GROUP BY ALL)
        SELECT t."modelId", list(tok) FROM (SELECT "modelId", tok, count(*) AS c FROM t GROUP BY ALL) t
        JOIN n USING ("modelId") WHERE c >= greatest({min_count}, {min_share} * n.n) GROUP BY ALL""",
                            params + params).fetchall())


def _hist_moment(power: int) -> str:
    """SQL: the power-th raw moment of a feature's logit histogram (bar values weighted by heights)."""
    v, h = "f.logits_hist_data_bar_values", "f.logits_hist_data_bar_heights"
    if power == 2:
        v = f"list_transform({v}, x -> x * x)"
    return (f"CASE WHEN len({v}) = len({h}) THEN list_inner_product({v}, {h}) / nullif(list_sum({h}), 0) END")


def baseline_evidence_rows(con: duckdb.DuckDBPyConnection, scope: Scope, limits: BaselineEvidenceLimits,
                           peak_kind_sql: str) -> list[tuple]:
    """Per feature in `scope` (by model, layer, index): modelId, layer, index, content peaks, their count, the
    number of top examples, artefact peaks, next and previous tokens, whole words, shared phrase, topic words and
    logit statistics (NULL where no logit can pass). `peak_kind_sql` classifies column `peak` (and `at_start`)."""
    cond, params = scope.where()
    f_cond, _ = scope.where("f")
    i = '"maxValueTokenIndex"'
    lim = limits
    return con.execute(f"""
        WITH top AS (
            SELECT feature_key, tokens[{i} + 1] AS peak, tokens[{i} + 2] AS nxt,
                   CASE WHEN {i} > 0 THEN tokens[{i}] END AS prv, "maxValue" AS v, {i} = 0 AS at_start,
                   list_slice(tokens, greatest(1, {i} + 1 - {lim.context_before}), {i} + {lim.max_phrase}) AS near,
                   least({i}, {lim.context_before}) AS p  -- the peak's position in `near`, from 0
            FROM activations
            WHERE coalesce("binMin", -1) = -1 AND {i} IS NOT NULL AND {cond}),
        n_top AS (SELECT feature_key, count(*) AS n FROM top GROUP BY ALL),
        words AS (  -- the whole words the peaks are pieces of ("wra" in "unwrap"), most common first
            SELECT feature_key, list(w ORDER BY c DESC, w)[1:{lim.max_words}] AS ws
            FROM (SELECT feature_key, w, count(*) AS c FROM (
                      SELECT feature_key, peak, trim(
                          CASE WHEN regexp_matches(peak, '^[\\p{{L}}\\p{{N}}_]')
                               THEN regexp_extract(array_to_string(list_slice(near, p - 2, p), ''), '[\\p{{L}}\\p{{N}}_]*$')
                               ELSE '' END || peak ||
                          CASE WHEN regexp_matches(peak, '[\\p{{L}}\\p{{N}}_]$')
                               THEN regexp_extract(array_to_string(list_slice(near, p + 2, p + 4), ''), '^[\\p{{L}}\\p{{N}}_]*')
                               ELSE '' END) AS w
                      FROM top WHERE peak IS NOT NULL)
                  WHERE w <> trim(peak) AND regexp_matches(w, '\\p{{L}}') GROUP BY ALL)
            JOIN n_top USING (feature_key) WHERE c >= greatest(2, {lim.word_share} * n) GROUP BY ALL),
        phrase AS (  -- the longest phrase of 2+ tokens right before the peak that top examples share
            SELECT feature_key, arg_max(ph, struct_pack(l, c)) AS ph
            FROM (SELECT feature_key, l, list_slice(near, p + 1 - l, p) AS ph, count(*) AS c
                  FROM top, range(2, {lim.max_phrase} + 1) AS r(l) WHERE p >= l GROUP BY ALL)
            JOIN n_top USING (feature_key)
            WHERE c >= greatest(2, {lim.context_share} * n) AND regexp_matches(array_to_string(ph, ''), '[\\p{{L}}\\p{{N}}]')
              AND NOT regexp_matches(array_to_string(ph, ''), '<\\|?[A-Za-z0-9_./-]+\\|?>|�')
            GROUP BY ALL),
        topic_words AS (  -- words before the peak, each counted once per example
            SELECT feature_key, unnest(list_distinct(list_transform(list_filter(list_slice(near, 1, p),
                       t -> regexp_full_match(trim(t), '\\p{{L}}{{2,}}')), t -> lower(trim(t))))) AS w FROM top),
        topic AS (  -- the context words that set a feature's examples apart from other features' examples
            SELECT feature_key, list(w ORDER BY c * ln(t.t / gw.g) DESC, w)[1:{lim.max_topic}] AS ws
            FROM (SELECT feature_key, w, count(*) AS c FROM topic_words GROUP BY ALL)
            JOIN n_top USING (feature_key) JOIN (SELECT w, count(*) AS g FROM topic_words GROUP BY ALL) AS gw USING (w),
                 (SELECT count(*) AS t FROM top) t
            WHERE c >= greatest(2, {lim.topic_share} * n) AND (c / n) / (gw.g / t.t) >= {lim.topic_lift} GROUP BY ALL),
        peaks AS (SELECT feature_key, coalesce(nullif(trim(peak), ''), peak) AS peak, bool_or(at_start) AS at_start,
                         count(*) AS c, max(v) AS m FROM top GROUP BY ALL),
        peak_lists AS (  -- the most common content peaks and artefact peaks (ties: the higher activation)
            SELECT feature_key, arg_max(peak, struct_pack(c, m), {lim.max_peaks}) FILTER (WHERE kind = 'content') AS ps,
                   coalesce(sum(c) FILTER (WHERE kind = 'content'), 0) AS n_content, sum(c) AS n,
                   arg_max(struct_pack(kind := kind, peak := peak), struct_pack(c, m), 2 * {lim.max_peaks})
                       FILTER (WHERE kind <> 'content') AS artefacts
            FROM (SELECT *, {peak_kind_sql} AS kind FROM peaks) GROUP BY ALL),
        context AS (  -- the most common next and previous tokens, with how many top examples have each
            SELECT feature_key,
                   arg_max(struct_pack(t := nxt, c := c), c, {lim.max_context}) FILTER (WHERE g = 1 AND nxt IS NOT NULL) AS nx,
                   arg_max(struct_pack(t := prv, c := c), c, {lim.max_context}) FILTER (WHERE g = 2 AND prv IS NOT NULL) AS pv
            FROM (SELECT feature_key, nxt, prv, grouping(nxt, prv) AS g, count(*) AS c FROM top
                  GROUP BY GROUPING SETS ((feature_key, nxt), (feature_key, prv)))
            GROUP BY ALL),
        logit_stats AS (
            SELECT feature_key, pos_str, pos_values, neg_values, {_hist_moment(1)} AS mu, {_hist_moment(2)} AS m2
            FROM features f WHERE {f_cond})
        SELECT f."modelId", f."layer", f."index", p.ps, p.n_content, p.n, p.artefacts, b.nx, b.pv,
               wd.ws AS words, ph.ph AS phrase, tp.ws AS topic,
               -- logits only where the unfiltered top-3 could pass (filtering only lowers them) or no histogram
               CASE WHEN l.m2 IS NULL OR (l.pos_values[1] + l.pos_values[2] + l.pos_values[3]) / 3
                    >= l.mu + {lim.z_effect} * sqrt(greatest(l.m2 - l.mu * l.mu, 0)) THEN struct_pack(
                    s := l.pos_str, p := l.pos_values, n := l.neg_values, mu := l.mu, m2 := l.m2) END AS logits
        FROM features f LEFT JOIN peak_lists p USING (feature_key) LEFT JOIN context b USING (feature_key)
             LEFT JOIN logit_stats l USING (feature_key) LEFT JOIN words wd USING (feature_key)
             LEFT JOIN phrase ph USING (feature_key) LEFT JOIN topic tp USING (feature_key)
        WHERE {f_cond}
        ORDER BY f."modelId", f."layer", f."index" """, params * 3).fetchall()


def replace_labels_of_type(store: FeatureStore, scope: Scope, type_name: str, explanations: pa.Table) -> None:
    """In one transaction, delete the explanations of `type_name` in `scope` and write `explanations` instead."""
    cond, params = scope.where()
    with store.transaction() as con:
        con.execute(f'DELETE FROM explanations WHERE "typeName" = ? AND {cond}', [type_name, *params])
        store.upsert({"explanations": explanations}, in_transaction=False)
        store.mark_search_stale()


# --- LLM explanations ---------------------------------------------------------------------------------------------

def explain_candidates(store: FeatureStore, scope: Scope, indices: Sequence[int] | None, keys: Sequence[str] | None,
                       type_name: str, explainer: str) -> list[tuple[str, str, int, list[str] | None, bool, bool]]:
    """(modelId, layer, index, pos_str, has_examples, done) of the features in `scope` (a model, optionally a
    source), narrowed to `indices` and/or feature `keys`, by layer and index; `done` when an explanation of
    `type_name` by `explainer` exists."""
    cond, params = scope.where()
    if indices is not None:
        cond += ' AND list_contains(?::BIGINT[], "index")'
        params.append(list(indices))
    if keys is not None:
        cond += " AND list_contains(?::VARCHAR[], feature_key)"
        params.append(list(keys))
    return store.con.execute(f"""
        WITH scope AS (SELECT "modelId", "layer", "index", feature_key, pos_str FROM features WHERE {cond})
        SELECT "modelId", "layer", "index", pos_str,
               feature_key IN (SELECT feature_key FROM activations WHERE "modelId" = ?) AS has_examples,
               feature_key IN (SELECT feature_key FROM explanations WHERE "modelId" = ? AND "typeName" = ?
                               AND "explanationModelName" = ?) AS done
        FROM scope ORDER BY "layer", "index" """,
                             [*params, scope.model, scope.model, type_name, explainer]).fetchall()


def explain_example_rows(store: FeatureStore, model: str, source: str,
                         indices: Sequence[int]) -> list[tuple[int, list[str], list[float], float, int, bool]]:
    """(index, tokens, values, maxValue, maxValueTokenIndex, is_top) of the activation rows of these features of one
    source, strongest first per feature (an index range, so DuckDB skips row groups by their min/max)."""
    idx = list(indices)
    return store.con.execute("""
        SELECT "index", tokens, "values", "maxValue", "maxValueTokenIndex", coalesce("binMin", -1) = -1
        FROM activations WHERE "modelId" = ? AND "layer" = ? AND "index" BETWEEN ? AND ?
          AND list_contains(?::BIGINT[], "index")
        ORDER BY "index", "maxValue" DESC NULLS LAST, id""", [model, source, min(idx), max(idx), idx]).fetchall()


# --- scoring ------------------------------------------------------------------------------------------------------

def _usable_of_type(type_name: str | None) -> tuple[str, list[Any]]:
    """Condition (and parameters) for explanations that can be scored: non-blank, of `type_name` when given."""
    if type_name:
        return USABLE_SQL + ' AND "typeName" = ?', [type_name]
    return USABLE_SQL, []


def model_has_rows(store: FeatureStore, model: str) -> bool:
    """True when the model has a feature row or an explanation row."""
    return bool(store.con.execute('SELECT 1 FROM features WHERE "modelId" = ? LIMIT 1', [model]).fetchone() or
                store.con.execute('SELECT 1 FROM explanations WHERE "modelId" = ? LIMIT 1', [model]).fetchone())


def explained_indices(store: FeatureStore, model: str, sources: Sequence[str],
                      type_name: str | None) -> dict[str, list[int]]:
    """source -> sorted indices of the model's features with a usable explanation (of `type_name` when given), in
    `sources` (every source of the model when empty)."""
    cond, params = _usable_of_type(type_name)
    sql = f'SELECT "layer", list(DISTINCT "index" ORDER BY "index") FROM explanations WHERE "modelId" = ? AND {cond}'
    args: list[Any] = [model, *params]
    if sources:
        sql += ' AND "layer" IN (SELECT unnest(?::VARCHAR[]))'
        args.append(list(sources))
    return {s: list(ix) for s, ix in store.con.execute(sql + " GROUP BY 1 ORDER BY 1", args).fetchall()}


def explanations_to_score(store: FeatureStore, model: str, source: str, lo: int, hi: int,
                          type_name: str | None) -> list[tuple[int, str, str, str]]:
    """(index, id, description, typeName) of the usable explanations of one source's features lo..hi (of
    `type_name` when given), by index and id."""
    cond, params = _usable_of_type(type_name)
    return store.con.execute(
        f'SELECT "index", id, description, "typeName" FROM explanations WHERE "modelId" = ? AND "layer" = ? '
        f'AND "index" BETWEEN ? AND ? AND {cond} ORDER BY "index", id', [model, source, lo, hi, *params]).fetchall()


# Ranks on the narrow columns first and reads the token and value lists of the chosen rows only: carrying
# 128-long lists through the window sorts made this read most of a scoring run's non-model time.
_WINDOWS_SQL = """
WITH a AS (
    SELECT "index", id, "maxValue" AS mv, coalesce("binMin", -1) = -1 AS top, "binMin" AS bin
    FROM activations
    WHERE "modelId" = $model AND "layer" = $source AND "index" BETWEEN $lo AND $hi
      AND "maxValueTokenIndex" IS NOT NULL AND "index" IN (SELECT unnest($wanted::BIGINT[]))),
r AS (SELECT *, row_number() OVER (PARTITION BY "index", top, bin ORDER BY mv DESC NULLS LAST, id) AS rb FROM a),
q AS (SELECT "index", id, top, bin,
             row_number() OVER (PARTITION BY "index", top ORDER BY CASE WHEN top THEN 0 ELSE rb END,
             CASE WHEN top THEN mv ELSE bin END DESC NULLS LAST, mv DESC NULLS LAST, id) AS rn FROM r),
x AS (SELECT q.*, t.tokens, t."values", t."maxValueTokenIndex" AS p, len(t.tokens) AS n
      FROM q JOIN activations t ON t.id = q.id
      WHERE q.rn <= $k AND t."modelId" = $model AND t."layer" = $source AND t."index" BETWEEN $lo AND $hi
        AND len(t.tokens) > 0),
w AS (SELECT *, greatest(0, least(n - $width, CAST(ceil((p - ($width - 1 - $after)) / $snap) AS BIGINT) * $snap)) AS st,
             CASE WHEN p >= n / 2 THEN 0 ELSE greatest(0, n - $width) END AS fs
      FROM x)
SELECT "index", top, bin, list_slice(tokens, st + 1, st + $width), list_slice("values", st + 1, st + $width), p - st,
       CASE WHEN top AND rn <= $far AND abs(fs - st) >= $width
                 AND coalesce(list_max(list_slice("values", fs + 1, fs + $width)), 0) <= 0
            THEN list_slice(tokens, fs + 1, fs + $width) END
FROM w ORDER BY "index", top DESC, rn
"""


def example_window_rows(store: FeatureStore, model: str, source: str, indices: Sequence[int],
                        spec: WindowSpec) -> list[tuple]:
    """(index, is_top, binMin, window tokens, window values, peak position in the window, far-window tokens or None)
    of the examples `spec` chooses for these features of one source (sorted indices), top examples first, best
    first: up to n_top + n_interval of each kind per feature."""
    idx = list(indices)
    return store.con.execute(_WINDOWS_SQL, {
        "model": model, "source": source, "lo": idx[0], "hi": idx[-1], "wanted": idx, "width": spec.width,
        "after": spec.after, "snap": max(1, spec.snap), "k": spec.n_top + spec.n_interval,
        "far": spec.n_far}).fetchall()
