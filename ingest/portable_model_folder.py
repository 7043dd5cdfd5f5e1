"""Make a model folder that transformers 4.57 (circuit-tracer's pin) and 5.x load identically.

transformers 5 writes `rope_parameters` where 4.57 reads `rope_theta` (and silently falls back to 10,000,
so predictions drift), `dtype` where 4.57 reads `torch_dtype`, and the tokenizer class `TokenizersBackend`,
which 4.57 does not know. Writing both spellings and the class both versions know fixes all three.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_V5_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def _rewrite(path: Path, fix: Any) -> bool:
    data = json.loads(path.read_text(encoding="utf-8"))
    new = fix(dict(data))
    if new == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return True


def _portable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    elif "rope_theta" in cfg and "rope_parameters" not in cfg:
        cfg["rope_parameters"] = {"rope_theta": cfg["rope_theta"],
                                  **(cfg.get("rope_scaling") or {"rope_type": "default"})}
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    elif "torch_dtype" in cfg and "dtype" not in cfg:
        cfg["dtype"] = cfg["torch_dtype"]
    return cfg


def _portable_tokenizer(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    for key in _V5_ONLY_TOKENIZER_KEYS:
        cfg.pop(key, None)
    return cfg


def make_portable(folder: str | Path) -> bool:
    """Rewrite config.json and tokenizer_config.json in place so both transformers lines read them the same;
    True when something changed."""
    folder = Path(folder)
    changed = False
    if (folder / "config.json").is_file():
        changed |= _rewrite(folder / "config.json", _portable_config)
    if (folder / "tokenizer_config.json").is_file() and (folder / "tokenizer.json").is_file():
        changed |= _rewrite(folder / "tokenizer_config.json", _portable_tokenizer)
    return changed
