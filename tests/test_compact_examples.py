"""Compact examples (schema v7): ingested values as UTINYINT relative to maxValue, each window's tokens once.

Every read and export must return Neuronpedia's shapes, with values within maxValue / 510 of the uncompressed
ones: the same ingest is run with compaction off (every example kept whole) as the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ingest.records as records
from featuredb import FeatureStore
from featuredb.formats.neuronpedia_export import export_neuronpedia
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.store.schema import ACTIVATION_ORDER
from ingest.run import IngestConfig, run_ingest
from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

N_FEATURES = 24
COMPARED = ("id", "modelId", "layer", "index", "tokens", "dataIndex", "dataSource", "maxValue", "maxValueTokenIndex",
            "binMin", "binMax", "binContains", "creatorId", "feature_key")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same ingest twice: compact (the default) and with every example kept whole."""
    root = tmp_path_factory.mktemp("compact")
    model = make_tiny_llama(root / "model")
    tc = write_circuit_tracer(root / "tc", {i: random_weights(N_FEATURES, seed=i) for i in range(2)},
                              activation="jumprelu")
    cfg = IngestConfig(transcoders=[str(tc)], model=str(model), corpus=str(write_corpus(root / "c.txt", 3000)),
                       layers=[0, 1], ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc")
    out = {"compact": root / "compact.duckdb", "whole": root / "whole.duckdb"}
    run_ingest(cfg, str(out["compact"]), progress=False)
    keep_whole = records._examples

    def whole_only(model_id, source, feats, wins, acts, bins, bank, vocab, opts, kind):  # type: ignore[no-untyped-def]
        compact, _ = keep_whole(model_id, source, feats[:0], wins[:0], acts[:0], bins[:0], bank, vocab, opts, kind)
        kinds = np.array([kind] * len(feats))
        return compact, records._example_table(model_id, source, feats, wins, acts, bins, bank, vocab, opts, kinds)

    records._examples = whole_only
    try:
        run_ingest(cfg, str(out["whole"]), progress=False)
    finally:
        records._examples = keep_whole
    return out


def _view_rows(store: FeatureStore) -> dict[str, dict]:
    cur = store.con.execute(f"SELECT * FROM activations ORDER BY feature_key, {ACTIVATION_ORDER}")
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


def test_compact_rows_are_within_a_510th_of_max_of_whole_rows(stores: dict[str, Path]) -> None:
    with FeatureStore(stores["compact"], read_only=True) as c, FeatureStore(stores["whole"], read_only=True) as w:
        assert c.con.execute("SELECT count(*) FROM activation_rows").fetchone()[0] == 0
        assert w.con.execute("SELECT count(*) FROM activation_examples").fetchone()[0] == 0
        compact, whole = _view_rows(c), _view_rows(w)
        windows = c.con.execute("SELECT count(*) FROM example_windows").fetchone()[0]
    assert len(whole) > 100 and compact.keys() == whole.keys()
    assert windows == len({r["tokens"].__repr__() for r in whole.values()})  # each window stored once
    for key, ref in whole.items():
        got = compact[key]
        assert {k: got[k] for k in COMPARED} == {k: ref[k] for k in COMPARED}, key
        bound = ref["maxValue"] / 510 + 1e-12
        assert max(abs(a - b) for a, b in zip(got["values"], ref["values"])) <= bound, key
        assert got["values"][ref["maxValueTokenIndex"]] == ref["maxValue"]  # the peak is exact
        assert [v == 0 for v in got["values"]] == [v < ref["maxValue"] / 510 for v in ref["values"]]
        assert abs(got["minValue"] - ref["minValue"]) <= bound


def test_get_feature_equals_the_activations_view_in_order(stores: dict[str, Path]) -> None:
    with FeatureStore(stores["compact"], read_only=True) as store:
        view = _view_rows(store)
        for source in ("0-tc", "1-tc"):
            for index in range(N_FEATURES):
                got = store.get_feature("tiny", source, index)
                key = f"tiny/{source}/{index}"
                expected = [r for r in view.values() if r["feature_key"] == key]
                expected.sort(key=lambda r: (-r["maxValue"], r["id"]))
                assert [a.id for a in got.activations] == [r["id"] for r in expected]
                for a, r in zip(got.activations, expected):
                    assert a.values == r["values"] and a.tokens == r["tokens"] and a.minValue == r["minValue"]
                    assert a.dataIndex == r["dataIndex"] and a.maxValueTokenIndex == r["maxValueTokenIndex"]
                assert [a.id for a in store.get_feature("tiny", source, index, max_acts=3).activations] == \
                    [r["id"] for r in expected[:3]]


def test_exports_carry_the_decoded_values_and_reimport_replaces_not_duplicates(stores: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    with FeatureStore(stores["compact"], read_only=True) as store:
        export_neuronpedia(store, tmp_path / "np", progress=False)
        before = _view_rows(store)
        feature = store.get_feature("tiny", "1-tc", 5).model_dump()
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(stores["compact"].read_bytes())
    with FeatureStore(copy) as store:
        import_neuronpedia(store, tmp_path / "np", progress=False)
        after = _view_rows(store)
        assert store.con.execute("SELECT count(*) FROM activation_rows").fetchone()[0] == 0  # nothing changed
        assert store.get_feature("tiny", "1-tc", 5).model_dump() == feature
    assert after == before
    with FeatureStore(tmp_path / "fresh.duckdb") as fresh:  # into a new store the rows come whole, as exported
        import_neuronpedia(fresh, tmp_path / "np", progress=False)
        assert _view_rows(fresh) == before
        assert fresh.get_feature("tiny", "1-tc", 5).model_dump() == feature


def test_a_whole_row_with_a_compact_rows_id_replaces_it(stores: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa

    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(stores["compact"].read_bytes())
    with FeatureStore(copy) as store:
        row = store.get_feature("tiny", "0-tc", 7).activations[0].model_dump()
        total = store.con.execute("SELECT count(*) FROM activations").fetchone()[0]
        edited = {k: row[k] for k in ("id", "modelId", "tokens", "maxValue", "dataIndex")}
        edited.update(layer="0-tc", index=7, values=[0.5] * len(row["tokens"]), maxValue=0.5)
        store.upsert({"activations": pa.Table.from_pylist([edited])})
        assert store.con.execute("SELECT count(*) FROM activations").fetchone()[0] == total
        got = [a for a in store.get_feature("tiny", "0-tc", 7).activations if a.id == row["id"]]
        assert len(got) == 1 and got[0].values == [0.5] * len(row["tokens"])
        assert store.con.execute("SELECT count(*) FROM feature_packs WHERE feature_key = 'tiny/0-tc/7'"
                                 ).fetchone()[0] == 0  # the pack would have hidden the new row


def test_get_feature_from_packs_equals_get_feature_from_the_rows(stores: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(stores["compact"].read_bytes())
    keys = [(s, i) for s in ("0-tc", "1-tc") for i in range(N_FEATURES)]
    with FeatureStore(copy) as store:
        assert store.con.execute("SELECT count(*) FROM feature_packs").fetchone()[0] == len(keys)
        packed = {k: store.get_feature("tiny", *k).model_dump() for k in keys}
        some = {k: store.get_feature("tiny", *k, max_acts=2).model_dump() for k in keys}
        store.con.execute("DELETE FROM feature_packs")
        assert {k: store.get_feature("tiny", *k).model_dump() for k in keys} == packed
        assert {k: store.get_feature("tiny", *k, max_acts=2).model_dump() for k in keys} == some
    assert sum(len(f["activations"]) for f in packed.values()) > 100


def test_writing_a_features_rows_drops_its_pack_and_only_its_pack(stores: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa

    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(stores["compact"].read_bytes())
    with FeatureStore(copy) as store:
        packs = store.con.execute("SELECT count(*) FROM feature_packs").fetchone()[0]
        store.upsert({"features": pa.Table.from_pylist([{"modelId": "tiny", "layer": "0-tc", "index": 3,
                                                         "maxActApprox": 123.0}])})
        assert store.get_feature("tiny", "0-tc", 3).maxActApprox == 123.0
        assert store.con.execute("SELECT count(*) FROM feature_packs").fetchone()[0] == packs - 1
        assert store.con.execute("SELECT count(*) FROM feature_packs WHERE feature_key = 'tiny/0-tc/3'"
                                 ).fetchone()[0] == 0


def test_threads_sharing_the_window_cache_read_the_same_features(stores: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's worker threads share one window cache; one clearing it (past WINDOW_CACHE) must not lose
    another's windows."""
    import threading

    import featuredb.store.feature_store as store_module

    monkeypatch.setattr(store_module, "WINDOW_CACHE", 1)  # every miss clears the cache
    keys = [(s, i) for s in ("0-tc", "1-tc") for i in range(N_FEATURES)]
    with FeatureStore(stores["compact"], read_only=True) as store:
        expected = {k: store.get_feature("tiny", *k).model_dump() for k in keys}
        errors: list[BaseException] = []
        got: list[dict] = []

        def worker() -> None:
            view = store.thread_view()
            try:
                for _ in range(5):
                    got.append({k: view.get_feature("tiny", *k).model_dump() for k in keys})
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(got) == 30 and all(g == expected for g in got)


def test_a_pack_leaves_out_the_fixed_bin_centres_and_stores_float32_lists_raw_yet_reads_back_exactly() -> None:
    """The histogram's bin centres are not repeated in every pack and the logit lens's float32 values are not
    17-digit JSON, yet the row reads back equal; a value float32 cannot hold, and a pack in the older layout
    (every field as JSON), read back exactly too."""
    import json
    import zlib

    from featuredb.activation_bins import hist_centres
    from featuredb.store.feature_packs import EXAMPLE_FIELDS, pack, unpack

    rng = np.random.default_rng(0)
    row = {"modelId": "m", "layer": "3-tc", "index": 7, "maxActApprox": 2.5, "explanations": None,
           "pos_values": rng.standard_normal(10).astype(np.float32).astype(np.float64).tolist(),
           "neg_values": [0.1, -0.2],  # not float32 values: kept as JSON
           "logits_hist_data_bar_values": rng.standard_normal(40).astype(np.float32).astype(np.float64).tolist(),
           "freq_hist_data_bar_values": hist_centres().tolist(), "freq_hist_data_bar_heights": [0.0] * 64}
    examples = {k: [1] for k in EXAMPLE_FIELDS}
    q = [bytes([0, 255, 3])]
    blob = pack(row, examples, q)
    fields, cols, qs = unpack(blob)
    assert fields == {k: v for k, v in row.items() if v is not None} and cols == examples
    assert [x.tobytes() for x in qs] == q
    head = json.loads(zlib.decompress(blob).split(b"\0", 1)[0])
    assert head["k"] == ["freq_hist_data_bar_values"]
    assert head["b"] == [["pos_values", 10], ["logits_hist_data_bar_values", 40]]
    old = zlib.compress(json.dumps({"f": fields, "e": examples, "n": [3]}).encode() + b"\0" + q[0])
    assert len(blob) < 0.8 * len(old)
    assert unpack(old)[0] == fields and unpack(old)[2][0].tobytes() == q[0]
