"""Write a deterministic synthetic Neuronpedia export (concept features with examples) for demos and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from tqdm import tqdm

from featuredb.formats.neuronpedia_export import BATCH_SIZE
from featuredb.identity import set_of_source
from featuredb.sql_literals import sql_string, sql_string_list

CONCEPTS = [
    "Texas", "Austin", "Dallas", "Paris", "France", "London", "river", "music", "football", "Python",
    "code", "cat", "dog", "money", "bank", "war", "king", "queen", "rain", "snow", "doctor", "hospital",
    "church", "election", "guitar", "ocean", "mountain", "computer", "coffee", "bread", "winter", "summer",
    "train", "airport", "planet", "star", "poem", "novel", "film", "painting",
]
FILLER = [
    "the", "of", "and", "to", "in", "a", "was", "for", "on", "as", "with", "by", "he", "it", "at", "from",
    "his", "an", "were", "are", "which", "this", "also", "be", "has", "had", "one", "their", "first", "new",
    "after", "two", "time", "year", "city", "state", "team", "album", "season", "game",
]
EXPLANATION_TEMPLATES = ["mentions of {c}", "the word \"{c}\" and related context", "references to {c}"]


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def generate_export(out: str | Path, *, model: str = "demo-model", source: str = "6-demo-transcoder",
                    n_features: int = 2048, n_activations: int = 20, ctx_len: int = 64, n_top: int | None = None,
                    progress: bool | None = None) -> Path:
    """Write {out}/{model}/{source}/... with n_features features, each with n_activations examples of ctx_len tokens."""
    d = Path(out) / model / source
    for sub in ("features", "activations", "explanations"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    set_name = set_of_source(source)
    created = "2025-01-01T00:00:00.000"
    _write_jsonl(d / "model.jsonl", [{
        "id": model, "displayName": model, "displayNameShort": model, "creatorId": "featuredb",
        "dimension": 576, "visibility": "PUBLIC", "defaultSourceSetName": set_name, "defaultSourceId": source,
        "inferenceEnabled": False, "instruct": False, "layers": 30, "neuronsPerLayer": n_features,
        "owner": "featuredb", "createdAt": created, "updatedAt": created}])
    _write_jsonl(d / "sourceset.jsonl", [{
        "modelId": model, "name": set_name, "hasDashboards": True, "visibility": "PUBLIC",
        "description": "synthetic transcoder features", "type": "transcoder", "creatorName": "featuredb",
        "urls": [], "creatorId": "featuredb", "createdAt": created}])
    _write_jsonl(d / "source.jsonl", [{
        "id": source, "modelId": model, "setName": set_name, "hasDashboards": True, "visibility": "PUBLIC",
        "creatorId": "featuredb", "num_prompts": 1000, "num_tokens_in_prompt": ctx_len, "dataset": "synthetic",
        "createdAt": created}])
    n_top = n_activations * 3 // 4 if n_top is None else n_top
    nc, nf = len(CONCEPTS), len(FILLER)
    con = duckdb.connect()
    con.execute(f"CREATE MACRO concept(i) AS {sql_string_list(CONCEPTS)}[((i % {nc}) + 1)::BIGINT]")
    con.execute(f"CREATE MACRO filler(h) AS {sql_string_list(FILLER)}[((h % {nf}) + 1)::BIGINT]")
    con.execute("CREATE MACRO u(h) AS (h % 10007) / 10007.0")  # deterministic uniform [0, 1)
    templates = sql_string_list(EXPLANATION_TEMPLATES)
    n_batches = -(-n_features // BATCH_SIZE)
    bar = tqdm(total=n_features, unit="feature", desc="generate export",
               disable=None if progress is None else not progress, leave=False)
    for b in range(n_batches):
        lo, hi = b * BATCH_SIZE, min(n_features, (b + 1) * BATCH_SIZE)
        feats = f"(SELECT range AS i, round(4 + 8 * u(hash(range, 'max')), 4) AS mx FROM range({lo}, {hi}))"
        m, s = sql_string(model), sql_string(source)
        con.execute(f"""COPY (SELECT {m} AS "modelId", {s} AS "layer", i::VARCHAR AS "index",
            '{set_name}' AS "sourceSetName", 'featuredb' AS "creatorId", mx AS "maxActApprox",
            round(0.0001 + 0.05 * u(hash(i, 'd')), 6) AS "frac_nonzero",
            list_transform(range(10), lambda k: ' ' || concept(i + k * 7)) AS "pos_str",
            list_transform(range(10), lambda k: round(2.0 - k * 0.1, 4)) AS "pos_values",
            list_transform(range(10), lambda k: ' ' || filler(hash(i, k))) AS "neg_str",
            list_transform(range(10), lambda k: round(-2.0 + k * 0.1, 4)) AS "neg_values",
            list_transform(range(20), lambda k: (hash(i, k, 'h') % 500)::DOUBLE) AS "freq_hist_data_bar_heights",
            list_transform(range(20), lambda k: round(mx * (k + 0.5) / 20, 4)) AS "freq_hist_data_bar_values",
            list_transform(range(20), lambda k: (hash(i, k, 'l') % 900)::DOUBLE) AS "logits_hist_data_bar_heights",
            list_transform(range(20), lambda k: round(-2 + k * 0.2, 4)) AS "logits_hist_data_bar_values",
            '{created}' AS "createdAt"
            FROM {feats} ORDER BY i) TO '{d}/features/batch-{b}.jsonl.gz' (FORMAT json, COMPRESSION gzip)""")
        con.execute(f"""COPY (SELECT 'exp-' || {s} || '-' || i AS "id", {m} AS "modelId", {s} AS "layer",
            i::VARCHAR AS "index",
            replace({templates}[((hash(i, 't') % 3) + 1)::BIGINT], '{{c}}', concept(i)) AS "description",
            'np_max-act-logits' AS "typeName", 'gpt-4o-mini' AS "explanationModelName",
            round(u(hash(i, 's')), 4) AS "scoreV1", 'featuredb' AS "authorId", '{created}' AS "createdAt"
            FROM {feats} ORDER BY i) TO '{d}/explanations/batch-{b}.jsonl.gz' (FORMAT json, COMPRESSION gzip)""")
        con.execute(f"""COPY (
            WITH a AS (SELECT i, mx, j, (hash(i, j, 'p') % {ctx_len})::BIGINT AS peak,
                              round(mx * (1 - j * 0.8 / {n_activations}), 4) AS top
                       FROM {feats}, range({n_activations}) t(j))
            SELECT 'act-' || {s} || '-' || i || '-' || j AS "id", {m} AS "modelId", {s} AS "layer",
                i::VARCHAR AS "index",
                list_transform(range({ctx_len}), lambda t: CASE WHEN t = peak THEN ' ' || concept(i)
                               ELSE ' ' || filler(hash(i, j, t)) END) AS "tokens",
                list_transform(range({ctx_len}), lambda t: CASE WHEN t = peak THEN top
                               ELSE round(top * 0.3 * u(hash(i, j, t, 'v')), 4) END) AS "values",
                top AS "maxValue", peak AS "maxValueTokenIndex", 0.0 AS "minValue",
                'synthetic:' || (i * {n_activations} + j) AS "dataIndex", 'synthetic' AS "dataSource",
                CASE WHEN j < {n_top} THEN -1.0 ELSE round(mx * 0.2, 4) END AS "binMin",
                CASE WHEN j < {n_top} THEN top ELSE round(mx * 0.8, 4) END AS "binMax",
                CASE WHEN j < {n_top} THEN -1.0 ELSE 0.01 END AS "binContains",
                'featuredb' AS "creatorId", '{created}' AS "createdAt"
            FROM a ORDER BY i, j) TO '{d}/activations/batch-{b}.jsonl.gz' (FORMAT json, COMPRESSION gzip)""")
        bar.update(hi - lo)
    bar.close()
    con.close()
    return Path(out)
