"""Explanation scores in Neuronpedia's ExplanationScore shape: write (replacing), read, and explanations.scoreV2.

A score is one number for one explanation by one scorer (`explanationScoreTypeName`, e.g. `eleuther_embedding`,
`eleuther_recall`, `eleuther_fuzz`) and scorer model (`explanationScoreModelName`), with the scorer's per-example
breakdown as a JSON string (`jsonDetails`). The embedding score is also written to the explanation's `scoreV2`,
the one number the label rule (featuredb.labels.label_rule) ranks explanations by.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import pyarrow as pa

from featuredb.errors import FeatureDBError
from featuredb.store.reads import dict_rows
from featuredb.store.schema import EXPLANATION_SCORES_COLUMNS

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore

EMBEDDING_TYPE = "eleuther_embedding"
RECALL_TYPE = "eleuther_recall"  # delphi's detection scorer
FUZZ_TYPE = "eleuther_fuzz"
SCORE_V2_TYPE = EMBEDDING_TYPE  # the score explanations.scoreV2 holds
DEFAULT_USER = "featuredb"

_ARROW_TYPES = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "TIMESTAMP": pa.timestamp("us")}  # UTC


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def score_id(explanation_id: str, type_name: str, model_name: str) -> str:
    """The deterministic id of the score of one explanation by one scorer type and model (as write_scores sets)."""
    return "fdb-" + hashlib.md5(f"{explanation_id}|{type_name}|{model_name}".encode()).hexdigest()


def _table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """The rows as an Arrow table of ExplanationScore columns; the last of several rows for one (explanation, type,
    model) wins, as a replace would."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        for field in ("explanationId", "explanationScoreTypeName", "explanationScoreModelName"):
            if not r.get(field):
                raise FeatureDBError(f"explanation score without {field}: {dict(r)!r:.200}")
        details = r.get("jsonDetails", "")
        rec = {
            "id": score_id(r["explanationId"], r["explanationScoreTypeName"], r["explanationScoreModelName"]),
            "explanationId": r["explanationId"],
            "value": None if r.get("value") is None else float(r["value"]),
            "explanationScoreTypeName": r["explanationScoreTypeName"],
            "explanationScoreModelName": r["explanationScoreModelName"],
            "initiatedByUserId": r.get("initiatedByUserId") or DEFAULT_USER,
            "jsonDetails": details if isinstance(details, str) else json.dumps(details, allow_nan=False, default=float),
            "createdAt": _utc(r["createdAt"]) if r.get("createdAt") else now,
        }
        last.pop(rec["id"], None)
        last[rec["id"]] = rec
    recs = list(last.values())
    return pa.table({c: pa.array([r[c] for r in recs], type=_ARROW_TYPES[ty])
                     for c, ty in EXPLANATION_SCORES_COLUMNS.items()})


def write_scores(store: FeatureStore, rows: Iterable[Mapping[str, Any]], *, in_transaction: bool = True) -> int:
    """Write explanation scores (dicts with ExplanationScore's fields; `initiatedByUserId`, `createdAt` optional,
    `id` always score_id(explanationId, type, model)), replacing scores with the same (explanationId, type, model), in one transaction. Embedding scores
    (eleuther_embedding) also become their explanation's scoreV2. Returns the rows written."""
    table = _table(rows)
    if table.num_rows == 0:
        return 0
    cols = ", ".join(f'"{c}"' for c in EXPLANATION_SCORES_COLUMNS)
    con = store.con

    def run() -> None:
        con.register("_scores_in", table)
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _scores AS SELECT {cols} FROM _scores_in")
        finally:
            con.unregister("_scores_in")
        try:
            con.execute("DELETE FROM explanation_scores WHERE id IN (SELECT id FROM _scores)")
            con.execute(f"INSERT INTO explanation_scores ({cols}) SELECT {cols} FROM _scores")
            changed = con.execute(f"""UPDATE explanations e SET "scoreV2" = s.value FROM _scores s
                WHERE e.id = s."explanationId" AND s."explanationScoreTypeName" = '{SCORE_V2_TYPE}'
                AND e."scoreV2" IS DISTINCT FROM s.value""").fetchone()[0]
            # Scores of explanations that are gone (a relabel replaced them) go with them, as Neuronpedia cascades.
            con.execute('DELETE FROM explanation_scores WHERE "explanationId" NOT IN (SELECT id FROM explanations)')
        finally:
            con.execute("DROP TABLE IF EXISTS _scores")
        if changed:
            store.mark_search_stale()  # scoreV2 decides labels, which search and feature documents carry

    if in_transaction:
        with store.transaction():
            run()
    else:
        run()
    return table.num_rows


def scores_of(store: FeatureStore, explanation_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each explanation's scores as Neuronpedia's GET feature lists them under `explanations[i].scores` (every
    ExplanationScore field; createdAt as ISO-8601 text). Explanations without scores map to []."""
    ids = list(dict.fromkeys(explanation_ids))
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    for rec in dict_rows(store.con.execute(
            """SELECT * FROM explanation_scores WHERE "explanationId" IN (SELECT unnest(?::VARCHAR[]))
               ORDER BY "explanationId", "explanationScoreTypeName", "explanationScoreModelName", id""", [ids])):
        created = rec.get("createdAt")
        if isinstance(created, datetime):
            if created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
            rec["createdAt"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out[rec["explanationId"]].append(rec)
    return out
