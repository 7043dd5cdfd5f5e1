"""Save trained transcoders in circuit-tracer's per-layer format: config.yaml plus layer_{i}.safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file

from featuredb.atomic_write import atomic_output
from ingest.transcoder import Transcoder

# circuit-tracer names the hook points of Llama-style models like this (its nnsight mapping).
FEATURE_INPUT_HOOK = "mlp.hook_in"
FEATURE_OUTPUT_HOOK = "mlp.hook_out"


def write_layer(folder: Path, t: Transcoder) -> Path:
    """layer_{i}.safetensors with circuit-tracer's keys; W_enc is stored (d_transcoder, d_model)."""
    tensors = {"W_enc": t.W_enc.T.contiguous().float(), "b_enc": t.b_enc.float(), "W_dec": t.W_dec.float(),
               "b_dec": (t.b_dec if t.b_dec is not None else t.W_dec.new_zeros(t.d_model)).float()}
    if t.threshold is not None:
        tensors["activation_function.threshold"] = t.threshold.float()
    if t.W_skip is not None:
        tensors["W_skip"] = t.W_skip.float()
    path = folder / f"layer_{t.layer}.safetensors"
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return path


def write_config(folder: Path, layers: list[int], *, model_name: str, scan: str, activation: str,
                 extra: dict[str, Any]) -> Path:
    """config.yaml; the positional `transcoders:` list (absolute paths) is written only when layers are 0..n-1."""
    cfg: dict[str, Any] = {"model_kind": "transcoder_set", "model_name": model_name, "scan": scan,
                           "feature_input_hook": FEATURE_INPUT_HOOK, "feature_output_hook": FEATURE_OUTPUT_HOOK,
                           "activation": activation}
    if sorted(layers) == list(range(len(layers))):
        # Absolute, as circuit-tracer's loader needs; featuredb's loader falls back to the folder if it moves.
        cfg["transcoders"] = [str((folder / f"layer_{i}.safetensors").resolve()) for i in sorted(layers)]
    else:
        cfg["layers"] = sorted(layers)
    cfg.update(extra)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
