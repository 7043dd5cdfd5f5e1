"""`featuredb train --ray` on a local 2-CPU Ray cluster: one task per layer group, the same files as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ingest.ray_train import run_ray_train
from ingest.train_run import REPORT, TrainConfig, TrainRun
from ingest.transcoder_training import TrainSettings
from tiny_model import N_LAYERS, make_tiny_llama, write_corpus

SETTINGS = TrainSettings(n_features=64, k=4, epochs=2, batch_tokens=128, dead_tokens=1000)
ONE_LAYER_PER_GROUP = 1e-6  # --memory-gb so small that every layer is its own group (and its own task)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray-train")
    return {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 9000), "root": root}


def _cfg(inputs: dict[str, Path], out: Path) -> TrainConfig:
    return TrainConfig(out=str(out), model=str(inputs["model"]), corpus=str(inputs["corpus"]), train_tokens=2000,
                       test_tokens=600, ctx_len=16, batch_size=8, settings=SETTINGS, memory_gb=ONE_LAYER_PER_GROUP)


def test_each_layer_group_trained_on_ray_equals_one_process(inputs: dict[str, Path], tmp_path: Path) -> None:
    local = TrainRun(_cfg(inputs, tmp_path / "local"), progress=False).run()
    ray = run_ray_train(_cfg(inputs, tmp_path / "ray"), workers=2, progress=False)
    assert [r.layer for r in ray.layers] == list(range(N_LAYERS))
    for layer in range(N_LAYERS):
        a = load_file(str(tmp_path / "local" / f"layer_{layer}.safetensors"))
        b = load_file(str(tmp_path / "ray" / f"layer_{layer}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"layer {layer} {k}")
    for x, y in zip(local.layers, ray.layers):
        assert (x.layer, x.outlier_tokens, x.attempts) == (y.layer, y.outlier_tokens, y.attempts)
        assert x.fvu == pytest.approx(y.fvu, rel=1e-3) and x.l0 == pytest.approx(y.l0, rel=1e-3)
    assert ray.ce_clean == pytest.approx(local.ce_clean, rel=1e-5)
    assert (ray.train_tokens, ray.test_tokens, ray.sink_tokens) == (local.train_tokens, local.test_tokens,
                                                                    local.sink_tokens)
    cfg_local = yaml.safe_load((tmp_path / "local" / "config.yaml").read_text())
    cfg_ray = yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())
    assert [Path(p).name for p in cfg_ray.pop("transcoders")] == [Path(p).name for p in cfg_local.pop("transcoders")]
    assert cfg_ray == cfg_local
    report = json.loads((tmp_path / "ray" / REPORT).read_text())
    assert [r["layer"] for r in report["layers"]] == list(range(N_LAYERS))


def test_train_ray_refuses_resume(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", "train", "--model", str(inputs["model"]),
                          "--corpus", str(inputs["corpus"]), "--out", str(tmp_path / "x"), "--ray", "--resume"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "--resume is not supported with --ray" in res.stderr
    assert not (tmp_path / "x").exists()
