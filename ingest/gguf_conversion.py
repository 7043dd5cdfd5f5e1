"""A GGUF checkpoint (the default model ships as one) to a normal safetensors model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from featuredb.atomic_write import replace_folder
from ingest.portable_model_folder import canonical_gguf_tokenizer, make_portable


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint with transformers and save it as a normal safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)  # transformers refuses to save a GGUF-loaded model as is
    plain = AutoModelForCausalLM.from_config(type(quant.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(quant.state_dict())
    plain.tie_weights()
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    canonical_gguf_tokenizer(gguf, tmp)
    make_portable(tmp)
    replace_folder(tmp, target)
