"""Load a causal LM and its tokenizer: a Hugging Face folder or id, a GGUF file, or the embedded default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from featuredb.errors import FeatureDBError
from ingest.default_model import DEFAULT_MODEL_ID, ensure_default_model, models_dir
from ingest.gguf_conversion import convert_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for harvesting, with what is needed to load it again."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    path: str
    device: torch.device
    dtype: torch.dtype


def pick_device(device: str | None) -> torch.device:
    """cuda when present unless told otherwise."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """--dtype by name; default float32 on CPU, bfloat16 on GPU."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise FeatureDBError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model_path(spec: str | None) -> tuple[str, str]:
    """(path or hub id, model id) for --model: 'default'/None, a folder, a .gguf file or a hub id."""
    if spec in (None, "", "default", DEFAULT_MODEL_ID):
        return str(ensure_default_model()), DEFAULT_MODEL_ID
    p = Path(spec)
    if p.is_file() and p.suffix == ".gguf":
        target = models_dir() / p.stem.lower()
        if not (target / "config.json").is_file():
            convert_gguf(p, target)
        return str(target), p.stem.lower()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FeatureDBError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p), p.name.lower()
    if p.suffix == ".gguf" or spec.startswith((".", "/")):
        raise FeatureDBError(f"{spec}: no such model file or folder")
    return spec, spec.split("/")[-1].lower()


def load_model(spec: str | None, *, dtype: str | None = None, device: str | None = None,
               model_id: str | None = None) -> LoadedModel:
    """Load model and tokenizer in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, default_id = resolve_model_path(spec)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    local = Path(path).is_dir()
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, local_files_only=local)
    except OSError as e:
        raise FeatureDBError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    return LoadedModel(model, tok, model_id or default_id, path, dev, dt)
