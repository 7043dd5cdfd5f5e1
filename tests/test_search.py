"""Concept search on a small hand-made store: every mode, filters, label preference, freshness, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.store import search_indexes as indexes
from featuredb.search.api import search
from featuredb.search.filters import SearchFilters, parse_layers

M = "m"
# (source, index, density, peak token, peak value, pos_str, neg_str, explanations[(type, text)])
FEATURES = [
    ("3-tc", 0, 0.001, " Texas", 5.0, [" Austin", " Houston"], [" Paris"],
     [("np_max-act", "the state of Texas and its cities")]),
    ("3-tc", 1, 0.002, " Paris", 4.0, [" France"], [" Texas"], [("np_max-act", "capital cities of European countries")]),
    ("8-tc", 2, 0.2, " Texas", 9.0, [" Cowboys"], [" Austin"], [("np_max-act", "Texas football teams")]),
    ("8-tc", 3, 0.003, " rain", 3.0, [" umbrella"], [" sun"], [("np_max-act", "rain and snow weather")]),
    ("8-tc", 4, 0.004, " Dallas", 2.0, [" Texas"], [], [("featuredb-baseline", '"Dallas" → says "Texas"'),
                                                       ("np_max-act-logits", "Dallas, a city in Texas")]),
]


def _tables() -> dict[str, pl.DataFrame]:
    feats, acts, expls = [], [], []
    for src, idx, density, tok, value, pos, neg, ex in FEATURES:
        feats.append({"modelId": M, "layer": src, "index": idx, "frac_nonzero": density, "maxActApprox": value,
                      "pos_str": pos, "pos_values": [1.0 - 0.1 * i for i in range(len(pos))], "neg_str": neg,
                      "neg_values": [-1.0 - 0.1 * i for i in range(len(neg))]})
        acts.append({"modelId": M, "layer": src, "index": idx, "tokens": [" In", tok, " today"],
                     "values": [0.0, value, 0.1], "maxValue": value, "maxValueTokenIndex": 1, "binMin": -1.0})
        for type_name, text in ex:
            expls.append({"modelId": M, "layer": src, "index": idx, "typeName": type_name, "description": text,
                          "scoreV1": 0.5})
    return {"features": pl.DataFrame(feats), "activations": pl.DataFrame(acts), "explanations": pl.DataFrame(expls)}


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "search.duckdb"
    with FeatureStore(path) as store:
        store.upsert(_tables())
    return path


def _keys(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{h.source}/{h.index}" for h in hits]


def test_text_search_ranks_by_bm25_and_filters(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        assert set(_keys(search(store, "Texas", mode="text"))) == {"3-tc/0", "8-tc/2", "8-tc/4"}
        assert _keys(search(store, "football", mode="text")) == ["8-tc/2"]
        assert _keys(search(store, "Texas", mode="text", filters=SearchFilters(layers=(3,)))) == ["3-tc/0"]
        # --layers means the same in search as in ingest and train: a list, ranges, or both
        for value, want in [("3", {"3-tc/0"}), ("3,8", {"3-tc/0", "8-tc/2", "8-tc/4"}), ("0-2,8", {"8-tc/2", "8-tc/4"}),
                            ("4-7", set())]:
            hits = search(store, "Texas", mode="text", filters=SearchFilters(layers=parse_layers(value)))
            assert set(_keys(hits)) == want, value
        dense_out = search(store, "Texas", mode="text", filters=SearchFilters(max_density=0.01))
        assert "8-tc/2" not in _keys(dense_out) and len(dense_out) == 2
        assert search(store, "cities", mode="text", filters=SearchFilters(sources=("3-tc",)))[0].source == "3-tc"


def test_semantic_search_finds_meaning_without_shared_words(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        assert _keys(search(store, "precipitation forecast", mode="semantic", limit=1)) == ["8-tc/3"]
        assert _keys(search(store, "Berlin and Rome", mode="semantic", limit=1)) == ["3-tc/1"]


def test_hnsw_index_gives_the_same_answers_as_the_exact_scan(store_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        exact = [_keys(search(store, q, mode="semantic", limit=3)) for q in ("weather", "American sports")]
    monkeypatch.setattr(indexes, "HNSW_MIN_TEXTS", 1)
    with FeatureStore(store_path) as store:
        store.refresh_search()
        assert indexes.has_hnsw(store.con)
    with FeatureStore(store_path, read_only=True) as store:
        assert indexes.has_hnsw(store.con)
        assert [_keys(search(store, q, mode="semantic", limit=3)) for q in ("weather", "American sports")] == exact


def test_auto_fuses_text_and_semantic(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        hits = search(store, "Texas football", limit=5)
    assert _keys(hits)[0] == "8-tc/2"  # first in both lists
    assert hits[0].score == pytest.approx(2 / 61)


def test_token_search_ranks_by_peak_activation(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        hits = search(store, " Texas", mode="token")
        assert _keys(hits) == ["8-tc/2", "3-tc/0"] and [h.score for h in hits] == [9.0, 5.0]
        assert _keys(search(store, "Texas", mode="token")) == ["8-tc/2", "3-tc/0"]
        assert hits[0].top_tokens == [" Texas"]


def test_logit_search_promotes_and_suppresses(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        assert _keys(search(store, "Austin", mode="logit")) == ["3-tc/0"]
        assert _keys(search(store, "Austin", mode="logit", negative=True)) == ["8-tc/2"]
        assert _keys(search(store, "Texas", mode="logit")) == ["8-tc/4"]


def test_hit_label_prefers_neuronpedia_types_over_baseline(store_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        (hit,) = search(store, "Dallas", mode="token")
    assert hit.label == "Dallas, a city in Texas" and hit.density == 0.004 and hit.model == M


def test_indexes_follow_writes(store_path: Path) -> None:
    with FeatureStore(store_path) as store:
        store.upsert({"explanations": pl.DataFrame([{"modelId": M, "layer": "8-tc", "index": 3,
                                                      "typeName": "np_max-act", "description": "volcanic eruptions"}])})
    with FeatureStore(store_path, read_only=True) as store:
        assert not indexes.is_dirty(store.con)
        assert _keys(search(store, "volcanic", mode="text")) == ["8-tc/3"]
        assert _keys(search(store, "lava from a mountain", mode="semantic", limit=1)) == ["8-tc/3"]


def test_unknown_model_empty_store_and_empty_query_are_clear(store_path: Path, tmp_path: Path) -> None:
    with FeatureStore(store_path, read_only=True) as store:
        with pytest.raises(NotFoundError, match="model 'gpt2' is not in the store; it has: m"):
            search(store, "Texas", filters=SearchFilters(model="gpt2"))
        with pytest.raises(FeatureDBError, match="empty"):
            search(store, "  ")
    with FeatureStore(tmp_path / "empty.duckdb") as store:
        with pytest.raises(NotFoundError, match="no features yet"):
            search(store, "Texas")


def test_cli_search_json_table_and_errors(store_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["search", " Texas", "--mode", "token", "--db", str(store_path), "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["hits"]
    assert [(h["source"], h["index"], h["score"]) for h in hits] == [("8-tc", "2", 9.0), ("3-tc", "0", 5.0)]
    table = runner.invoke(cli, ["search", "football", "--mode", "text", "--db", str(store_path)])
    assert table.exit_code == 0 and "m/8-tc/2" in table.stdout and "Texas football teams" in table.stdout
    bad = runner.invoke(cli, ["search", "x", "--model", "nope", "--db", str(store_path)])
    assert bad.exit_code == 1 and "featuredb: error: model 'nope' is not in the store" in bad.stderr
    layers = runner.invoke(cli, ["search", "x", "--layers", "9-3", "--db", str(store_path)])
    assert layers.exit_code == 1 and "--layers '9-3': the range is empty" in layers.stderr


def test_cli_refreshes_a_stale_store_before_searching(store_path: Path) -> None:
    store = FeatureStore(store_path)
    store.mark_search_stale()
    store.con.execute("UPDATE explanations SET description = 'glaciers and ice' WHERE \"index\" = 3")
    store.con.close()  # leave it stale without the refresh close() would do, as a crashed writer would
    res = CliRunner().invoke(cli, ["search", "glaciers", "--mode", "text", "--db", str(store_path), "--json"])
    assert res.exit_code == 0, res.output
    assert [h["index"] for h in json.loads(res.stdout)["hits"]] == ["3"]


def test_embeddings_read_labels_without_their_punctuation() -> None:
    """A baseline label embeds as its words: same vector as the plain words, and half the word pieces."""
    from featuredb.search.embedder import embed, embedding_text

    label = '"Texas"/"Dallas"/"Houston" → says "Austin", "state"'
    assert embedding_text(label) == "Texas Dallas Houston says Austin state"
    assert embedding_text('" "') == '" "', "a label of only punctuation keeps its text"
    a, b, c = embed([label, "Texas Dallas Houston says Austin state", "rainfall and weather"])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-5) and float(a @ c) < 0.5


def test_a_store_embedded_by_an_older_format_is_embedded_again(store_path: Path) -> None:
    with FeatureStore(store_path) as store:
        store.con.execute("UPDATE search_texts SET embedding = embedding.list_transform(x -> 0.0)::FLOAT[384]")
        store.con.execute("UPDATE search_state SET value = '2' WHERE key = 'format'")
        store.refresh_search()
        norms = store.con.execute("SELECT min(list_sum(list_transform(embedding, x -> x * x))) FROM search_texts")
        assert norms.fetchone()[0] == pytest.approx(1.0, abs=1e-4)
        assert _keys(search(store, "precipitation forecast", mode="semantic", limit=1)) == ["8-tc/3"]


def test_every_command_reads_layers_one_way_and_refuses_bad_ones_in_one_line() -> None:
    assert parse_layers("0-3,10") == (0, 1, 2, 3, 10) and parse_layers("5, 2-3") == (2, 3, 5)
    assert parse_layers(None) is None and parse_layers(" ") is None
    for bad, says in [("3-1", "the range is empty"), ("a", "expected e.g. 3,5"), ("-2", "expected e.g."),
                      ("1,,2", "expected e.g.")]:
        with pytest.raises(FeatureDBError, match=says):
            parse_layers(bad)
    import click

    from featuredb.cli.root import cli

    helps = {name: next(p.help for p in cli.get_command(None, name).params if p.name == "layers")
             for name in ("ingest", "train", "search")}
    assert all("3,5" in h for h in helps.values()), helps  # one grammar, said the same way
    assert isinstance(cli.get_command(None, "search"), click.Command)


def test_keyword_fallback_keeps_the_model_and_source_filters(store_db: Path) -> None:
    """Stores without search indexes answer explanation search by keywords, within the asked model and sources."""
    from conftest import MODEL, SOURCE
    from featuredb.search.explanation_search import keyword_explanations

    with FeatureStore(store_db, read_only=True) as store:
        rows = keyword_explanations(store, "Austin texas", model=MODEL, sources=[SOURCE])
        assert rows and rows[0]["index"] == "3" and "Austin" in rows[0]["description"]
        assert keyword_explanations(store, "Austin", model=MODEL, sources=["9-other-source"]) == []
        assert keyword_explanations(store, "Austin", model="other-model") == []
        assert keyword_explanations(store, "Austin", sources=[SOURCE, "9-other-source"])[0]["index"] == "3"
