"""One label rule (featuredb.labels.label_rule): search, trace label clerps, supernode names and GET feature agree,
and the rule's SQL and Python forms order explanations the same way."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import polars as pl
import pytest

from featuredb import FeatureStore
from featuredb.labels import baseline
from featuredb.store.label_query import labels_sql
from featuredb.labels.label_rule import (BASELINE_TYPE, LABEL_ORDER_SQL, best_label, label_sort_key,
                                         sort_explanations)
from featuredb.search.api import search
from tracer import feature_labels
from tracer.feature_labels import best_explanation, store_labels
from tracer.supernodes import SupernodeOptions
from tracer.trace_label import trace_label

from conftest import MODEL, SOURCE
from test_tracer import feat, graph_of

# Feature 5 of the store: a baseline label, an np_max-act-logits label (scoreV1 0.3) and a scored LLM label
# (scoreV2 0.8, the embedding score): the scored one is the label, everywhere.
LABELS = [("x1", BASELINE_TYPE, None, None, "volcanic baseline words"),
          ("x2", "np_max-act-logits", 0.3, None, "volcanic eruptions of the logits kind"),
          ("x3", "oai_token-act-pair", 0.1, 0.8, "volcanic lava flows and eruptions")]
EXPECTED = "volcanic lava flows and eruptions"


def test_one_type_name_for_baseline_labels() -> None:
    assert baseline.BASELINE_TYPE == feature_labels.BASELINE_TYPE == BASELINE_TYPE == "featuredb-baseline"
    assert not hasattr(baseline, "TYPE_NAME")  # defined once, in label_rule


@pytest.fixture
def labelled_db(store_db: Path) -> Path:
    with FeatureStore(store_db) as store:
        store.con.execute('DELETE FROM explanations WHERE "index" IN (5, 6)')
        rows = [(i, f"{r[0]}-{i}", *r[1:]) for i in (5, 6) for r in LABELS]
        store.upsert({"explanations": pl.DataFrame({
            "id": [r[1] for r in rows], "modelId": [MODEL] * len(rows), "layer": [SOURCE] * len(rows),
            "index": [r[0] for r in rows], "typeName": [r[2] for r in rows], "scoreV1": [r[3] for r in rows],
            "scoreV2": [r[4] for r in rows], "description": [r[5] for r in rows]},
            schema_overrides={"scoreV1": pl.Float64, "scoreV2": pl.Float64})})
    return store_db


def test_search_trace_label_supernodes_and_get_feature_pick_the_same_label(labelled_db: Path) -> None:
    with FeatureStore(labelled_db, read_only=True) as store:
        hits = [h for h in search(store, "volcanic", mode="text", limit=20) if h.index == 5]
        assert hits and hits[0].label == EXPECTED
        key = store.con.execute('SELECT feature_key FROM features WHERE "index" = 5').fetchone()[0]
        assert store_labels(store, [key]) == {key: (EXPECTED, "oai_token-act-pair")}
        feature = store.get_feature(MODEL, SOURCE, 5)
        assert feature.explanations[0].description == EXPECTED
        assert best_explanation(feature.explanations) == (EXPECTED, "oai_token-act-pair")
        # features 5 and 6 (the same explanations) at one position: their clerps and their supernode's name
        graph = graph_of([feat(5, pos=1), feat(6, pos=1)], [])
        res = trace_label(store, graph, options=SupernodeOptions(min_size=2, threshold=0.0))
    clerps = {n["node_id"]: n["clerp"] for n in graph["nodes"]}
    assert clerps == {"6_5_1": EXPECTED, "6_6_1": EXPECTED}
    assert [(s.label, sorted(s.node_ids)) for s in res.supernodes] == [(EXPECTED, ["6_5_1", "6_6_1"])]


TYPES = ["np_max-act-logits", "np_max-act", "oai_token-act-pair", "gpt-4o", BASELINE_TYPE, None]
SCORES = [None, 0.0, 0.1, 0.5, 0.9, -1.0]


def _random_rows(rng: random.Random, n: int) -> list[dict]:
    return [{"id": f"id{rng.randrange(1000):03d}-{k}", "typeName": rng.choice(TYPES),
             "scoreV1": rng.choice(SCORES), "scoreV2": rng.choice(SCORES + [None, None]),
             "description": rng.choice(["a", "b", "  ", ""])} for k in range(n)]


@pytest.mark.parametrize("seed", range(8))
def test_sql_and_python_forms_of_the_rule_agree(seed: int) -> None:
    rng = random.Random(seed)
    rows = _random_rows(rng, rng.randrange(1, 25))
    rng.shuffle(rows)
    con = duckdb.connect()
    con.execute('CREATE TABLE explanations (id VARCHAR, "typeName" VARCHAR, "scoreV1" DOUBLE, "scoreV2" DOUBLE, '
                'description VARCHAR, feature_key VARCHAR)')
    con.executemany("INSERT INTO explanations VALUES (?, ?, ?, ?, ?, 'k')",
                    [[r["id"], r["typeName"], r["scoreV1"], r["scoreV2"], r["description"]] for r in rows])
    sql_order = [r[0] for r in con.execute(f"SELECT id FROM explanations ORDER BY {LABEL_ORDER_SQL}").fetchall()]
    assert sql_order == [r["id"] for r in sort_explanations(rows)]
    again = rows[::-1]
    assert [r["id"] for r in sorted(again, key=label_sort_key)] == sql_order  # the input order does not matter
    best = best_label(rows)
    sql_best = con.execute(labels_sql(columns="id")).fetchall()
    assert (best["id"] if best else None) == (sql_best[0][0] if sql_best else None)


def test_score_first_then_type_then_id() -> None:
    rows = [{"id": "b", "typeName": "np_max-act-logits", "scoreV1": 0.2, "description": "x"},
            {"id": "a", "typeName": BASELINE_TYPE, "scoreV2": 0.9, "scoreV1": None, "description": "y"},
            {"id": "c", "typeName": "np_max-act", "scoreV1": 0.2, "description": "z"},
            {"id": "d", "typeName": "np_max-act-logits", "scoreV1": None, "description": "w"},
            {"id": "e", "typeName": "gpt-4o", "scoreV2": 0.0, "scoreV1": 0.95, "description": "v"}]
    assert [r["id"] for r in sort_explanations(rows)] == ["a", "b", "c", "e", "d"]
