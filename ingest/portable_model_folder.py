"""Make a model folder that transformers 4.57 (circuit-tracer's pin) and 5.x load identically.

transformers 5 writes `rope_parameters` where 4.57 reads `rope_theta` (and silently falls back to 10,000,
so predictions drift), `dtype` where 4.57 reads `torch_dtype`, and the tokenizer class `TokenizersBackend`,
which 4.57 does not know. Writing both spellings and the class both versions know fixes all three.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featuredb.atomic_write import write_bytes_atomically

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_V5_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def _rewrite(path: Path, fix: Any) -> bool:
    data = json.loads(path.read_text(encoding="utf-8"))
    new = fix(dict(data))
    if new == data:
        return False
    write_bytes_atomically(path, (json.dumps(new, indent=2, sort_keys=True) + "\n").encode("utf-8"))
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


def _gguf_field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return field.parts[field.data[0]].tolist()[0]


def canonical_gguf_tokenizer(gguf_file: str | Path, folder: str | Path) -> None:
    """Rewrite a GGUF-converted tokenizer from the GGUF's own metadata, the same whatever transformers converted it.

    transformers 4.57's GGUF converter writes a LlamaTokenizer that adds BOS and calls BOS the EOS token, where
    the GGUF says `add_bos_token: false` and EOS is another id; 5.x follows the GGUF. Here the special tokens and
    BOS handling come from the GGUF, the post-processor adds nothing unless the GGUF asks for BOS, and the class is
    PreTrainedTokenizerFast (known to both lines).
    """
    import gguf
    from tokenizers import Tokenizer, processors

    folder = Path(folder)
    reader = gguf.GGUFReader(str(gguf_file))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = {name: _gguf_field(reader, f"tokenizer.ggml.{key}") for name, key in
           (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"))}
    specials = {name: tok.id_to_token(int(i)) for name, i in ids.items() if i is not None}
    add_bos = bool(_gguf_field(reader, "tokenizer.ggml.add_bos_token"))
    if add_bos and "bos_token" in specials:
        bos = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, int(ids["bos_token"]))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(folder / "tokenizer.json"))
    cfg_path = folder / "tokenizer_config.json"
    old = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg = {"tokenizer_class": PORTABLE_TOKENIZER_CLASS, **specials, "add_bos_token": add_bos,
           "add_eos_token": False, "clean_up_tokenization_spaces": False,
           "model_max_length": old.get("model_max_length", int(1e30))}
    if "chat_template" in old:
        cfg["chat_template"] = old["chat_template"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
    (folder / "tokenizer.model").unlink(missing_ok=True)  # a 4.57 leftover no fast tokenizer needs
