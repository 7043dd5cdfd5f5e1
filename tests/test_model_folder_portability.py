"""The default model folder featuredb writes gives the same tokens and logits under transformers 4.57
(circuit-tracer's environment, .venv) and 5.x (.venv-tf5): no silent rope_theta fallback, no unknown tokenizer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ingest.default_model import ensure_default_model

pytestmark = [pytest.mark.slow, pytest.mark.circuit_tracer]
ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENTS = {"4.57": ROOT / ".venv" / "bin" / "python", "5": ROOT / ".venv-tf5" / "bin" / "python"}
SCRIPT = """
import json, sys, numpy as np, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
ids = tok("Fact: Dallas is in the state of", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits[0]
rope = getattr(model.config, "rope_theta", None) or (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta")
np.save(out + ".npy", logits.numpy())
json.dump({"version": transformers.__version__, "ids": ids[0].tolist(), "rope_theta": rope,
           "tokenizer": type(tok).__name__, "next": tok.decode([int(logits[-1].argmax())])}, open(out + ".json", "w"))
"""


def test_default_model_folder_loads_identically_under_transformers_4_57_and_5(tmp_path: Path) -> None:
    folder = ensure_default_model()
    runs = {}
    for name, python in ENVIRONMENTS.items():
        assert python.exists(), f"{python} is missing: `make test` builds both environments"
        out = tmp_path / name
        res = subprocess.run([str(python), "-c", SCRIPT, str(folder), str(out)], capture_output=True, text=True,
                             timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = (json.loads(Path(f"{out}.json").read_text()), np.load(f"{out}.npy"))
    (old, old_logits), (new, new_logits) = runs["4.57"], runs["5"]
    assert old["version"].startswith("4.57") and new["version"].startswith("5.")
    assert old["ids"] == new["ids"]
    assert old["rope_theta"] == new["rope_theta"] == 100_000
    assert old["next"] == new["next"] == " Texas"
    np.testing.assert_allclose(old_logits, new_logits, rtol=1e-4, atol=1e-3)
