"""Read transcoders from disk: circuit-tracer (per-layer and cross-layer), SAELens, GemmaScope and sparsify."""

from __future__ import annotations

import contextvars
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from featuredb.errors import FeatureDBError
from ingest.transcoder import HOOK_MLP_IN, HOOK_MLP_OUT, HOOK_RESID_MID, Transcoder, canonical_hook


class TranscoderFormatError(FeatureDBError):
    """A transcoder folder or file that cannot be read."""


@dataclass
class TranscoderSet:
    """The transcoders to ingest, one per layer, and how they were found."""

    transcoders: list[Transcoder]
    format: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Layers covered, ascending."""
        return [t.layer for t in self.transcoders]


_LAZY = contextvars.ContextVar("featuredb_lazy_transcoders", default=False)


def _one_layer(build: Callable[..., Transcoder]) -> Callable[..., Transcoder]:
    """A reader of one layer's transcoder; under lazy loading its weights are read and checked, then let go until
    `Transcoder.materialise` reads them again, so a set is never in memory all at once."""

    @functools.wraps(build)
    def read(*args: Any) -> Transcoder:
        t = build(*args)
        if _LAZY.get():
            t.reload = functools.partial(build, *args)
            t.release()
        return t

    return read


def _hook(name: str | None, default: str, where: Path) -> str:
    if not name:
        return default
    hook = canonical_hook(name)
    if hook is None:
        raise TranscoderFormatError(f"{where}: unsupported hook point {name!r} (expected an MLP input/output hook)")
    return hook


def _layer_from_path(path: Path) -> int | None:
    m = re.search(r"layer[s]?[_.-]?(\d+)", str(path))
    return int(m.group(1)) if m else None


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TranscoderFormatError(f"{path}: missing transcoder file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise TranscoderFormatError(f"{path}: not a readable safetensors file ({e})") from None


def _need(tensors: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise TranscoderFormatError(f"{path}: missing tensor(s) {', '.join(missing)}")


# -- circuit-tracer per-layer: config.yaml + layer_{i}.safetensors ---------------------------------------


@_one_layer
def _circuit_tracer_layer(path: Path, layer: int, cfg: dict[str, Any], hook_in: str, hook_out: str) -> Transcoder:
    t = _safetensors(path)
    _need(t, ("W_enc", "W_dec", "b_enc"), path)
    activation = cfg.get("activation")
    threshold = t.get("activation_function.threshold")
    k = cfg.get("k")
    if "k" in t:
        k = int(t["k"].item())
    if activation is None:
        activation = "jumprelu" if threshold is not None else ("topk" if k else "relu")
    if activation == "topk" and not k:
        raise TranscoderFormatError(f"{path}: activation topk needs k (config.yaml 'k' or a 'k' tensor)")
    return Transcoder(layer=layer, W_enc=t["W_enc"].T.contiguous(), b_enc=t["b_enc"], W_dec=t["W_dec"],
                      activation=activation, threshold=threshold, k=int(k) if k else None, b_dec=t.get("b_dec"),
                      W_skip=t.get("W_skip"), hook_in=hook_in, hook_out=hook_out, path=str(path))


def _set_name(cfg: dict[str, Any], folder: Path) -> str:
    """config.yaml's set_name, else the last part of its scan ('org/repo@rev' gives 'repo'), else the folder."""
    if cfg.get("set_name"):
        return str(cfg["set_name"])
    scan = str(cfg.get("scan") or "").split("@")[0].rstrip("/")
    return scan.rsplit("/", 1)[-1] or folder.name


def _load_circuit_tracer(folder: Path, cfg: dict[str, Any]) -> TranscoderSet:
    hook_in = _hook(cfg.get("feature_input_hook"), HOOK_MLP_IN, folder / "config.yaml")
    hook_out = _hook(cfg.get("feature_output_hook"), HOOK_MLP_OUT, folder / "config.yaml")
    if cfg.get("model_kind", "transcoder_set") == "cross_layer_transcoder":
        return _load_clt(folder, hook_in, hook_out, cfg)
    paths: dict[int, Path] = {}
    if "transcoders" in cfg:
        for i, p in enumerate(cfg["transcoders"]):
            if str(p).startswith("hf://"):
                raise TranscoderFormatError(
                    f"{folder / 'config.yaml'}: {p} is on the Hugging Face hub; download it and list the local file")
            paths[i] = (folder / p) if not Path(p).is_absolute() else Path(p)
            if Path(p).is_absolute() and (folder / Path(p).name).is_file():
                paths[i] = folder / Path(p).name  # the file beside config.yaml (the folder may have been moved)
    else:
        for f in folder.glob("layer_*.safetensors"):
            m = re.fullmatch(r"layer_(\d+)\.safetensors", f.name)
            if m:
                paths[int(m.group(1))] = f
    if not paths:
        raise TranscoderFormatError(f"{folder}: config.yaml lists no transcoders and there is no layer_*.safetensors")
    tcs = [_circuit_tracer_layer(paths[i], i, cfg, hook_in, hook_out) for i in sorted(paths)]
    return TranscoderSet(tcs, "circuit-tracer", _set_name(cfg, folder),
                         {"model_name": cfg.get("model_name"), "feature_input_hook": cfg.get("feature_input_hook"),
                          "feature_output_hook": cfg.get("feature_output_hook")})


@_one_layer
def _clt_layer(folder: Path, i: int, hook_in: str, hook_out: str) -> Transcoder:
    enc_path, dec_path = folder / f"W_enc_{i}.safetensors", folder / f"W_dec_{i}.safetensors"
    enc, dec = _safetensors(enc_path), _safetensors(dec_path)
    _need(enc, (f"W_enc_{i}", f"b_enc_{i}"), enc_path)
    _need(dec, (f"W_dec_{i}",), dec_path)
    w_dec = dec[f"W_dec_{i}"]
    threshold = enc.get(f"threshold_{i}")
    return Transcoder(
        layer=i, W_enc=enc[f"W_enc_{i}"].T.contiguous(), b_enc=enc[f"b_enc_{i}"],
        # The feature writes to every later layer; its total write to the residual stream drives the logits.
        W_dec=w_dec.sum(dim=1) if w_dec.dim() == 3 else w_dec,
        activation="jumprelu" if threshold is not None else "relu", threshold=threshold,
        b_dec=enc.get(f"b_dec_{i}"), hook_in=hook_in, hook_out=hook_out, path=str(enc_path),
        extra={"cross_layer": True})


def _load_clt(folder: Path, hook_in: str, hook_out: str, cfg: dict[str, Any]) -> TranscoderSet:
    layers = sorted(int(m.group(1)) for f in folder.glob("W_enc_*.safetensors")
                    if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", f.name)))
    if not layers:
        raise TranscoderFormatError(f"{folder}: no W_enc_*.safetensors files for a cross-layer transcoder")
    if layers != list(range(len(layers))):
        raise TranscoderFormatError(f"{folder}: cross-layer transcoder layers {layers} are not 0..n-1")
    tcs = [_clt_layer(folder, i, hook_in, hook_out) for i in layers]
    return TranscoderSet(tcs, "circuit-tracer-clt", _set_name(cfg, folder),
                         {"model_name": cfg.get("model_name")})


# -- SAELens: cfg.json + sae_weights.safetensors -----------------------------------------------------------


@_one_layer
def _load_saelens(folder: Path) -> Transcoder:
    cfg = json.loads((folder / "cfg.json").read_text())
    t = _safetensors(folder / "sae_weights.safetensors")
    _need(t, ("W_enc", "W_dec", "b_enc"), folder / "sae_weights.safetensors")
    hook_name = cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name") or ""
    layer = cfg.get("hook_layer")
    if layer is None:
        m = re.search(r"blocks\.(\d+)\.", hook_name)
        layer = int(m.group(1)) if m else _layer_from_path(folder)
    if layer is None:
        raise TranscoderFormatError(f"{folder / 'cfg.json'}: cannot tell the layer (no hook_layer or blocks.N hook)")
    arch = str(cfg.get("architecture", "standard")).lower()
    threshold = t.get("threshold")
    if threshold is None and "log_threshold" in t:
        threshold = t["log_threshold"].exp()
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    activation = ("jumprelu" if "jumprelu" in arch or threshold is not None
                  else "topk" if "topk" in arch or cfg.get("activation_fn") == "topk" else "relu")
    if activation == "topk" and not k:
        raise TranscoderFormatError(f"{folder / 'cfg.json'}: a topk SAE needs k")
    b_dec = t.get("b_dec")
    input_bias = b_dec if cfg.get("apply_b_dec_to_input") and b_dec is not None \
        and b_dec.shape[0] == t["W_enc"].shape[0] else None
    return Transcoder(layer=int(layer), W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], activation=activation,
                      threshold=threshold, k=int(k) if k else None, b_dec=b_dec, input_bias=input_bias,
                      W_skip=t.get("W_skip"), hook_in=_hook(hook_name, HOOK_MLP_IN, folder / "cfg.json"),
                      hook_out=_hook(cfg.get("hook_name_out"), HOOK_MLP_OUT, folder / "cfg.json"),
                      path=str(folder), extra={"architecture": arch})


# -- GemmaScope: params.npz -----------------------------------------------------------------------------------


@_one_layer
def _load_gemmascope(path: Path, layer: int | None) -> Transcoder:
    try:
        p = np.load(path)
        params = {k: torch.from_numpy(np.asarray(p[k], dtype=np.float32)) for k in p.files}
    except Exception as e:
        raise TranscoderFormatError(f"{path}: not a readable params.npz ({e})") from None
    _need(params, ("W_enc", "W_dec", "b_enc", "threshold"), path)
    layer = layer if layer is not None else _layer_from_path(path)
    if layer is None:
        raise TranscoderFormatError(f"{path}: cannot tell the layer; put it under a layer_N folder")
    return Transcoder(layer=layer, W_enc=params["W_enc"], b_enc=params["b_enc"], W_dec=params["W_dec"],
                      activation="jumprelu", threshold=params["threshold"], b_dec=params.get("b_dec"),
                      hook_in=HOOK_MLP_IN, hook_out=HOOK_MLP_OUT, path=str(path))


# -- EleutherAI sparsify: {hookpoint}/cfg.json + sae.safetensors -------------------------------------------


@_one_layer
def _load_sparsify(folder: Path) -> Transcoder:
    cfg = json.loads((folder / "cfg.json").read_text())
    t = _safetensors(folder / "sae.safetensors")
    _need(t, ("encoder.weight", "encoder.bias", "W_dec"), folder / "sae.safetensors")
    m = re.fullmatch(r"(?:.*\.)?layers\.(\d+)(\.mlp)?", folder.name)
    if not m:
        raise TranscoderFormatError(f"{folder}: sparsify hookpoint {folder.name!r} is not 'layers.N.mlp'")
    if not m.group(2):
        raise TranscoderFormatError(f"{folder}: hookpoint {folder.name!r} is the residual stream; need layers.N.mlp")
    transcode = bool(cfg.get("transcode", False))
    b_dec = t.get("b_dec")
    return Transcoder(layer=int(m.group(1)), W_enc=t["encoder.weight"].T.contiguous(), b_enc=t["encoder.bias"],
                      W_dec=t["W_dec"], activation="topk", k=int(cfg.get("k", 32)), b_dec=b_dec,
                      input_bias=None if transcode else b_dec, W_skip=t.get("W_skip"), hook_in=HOOK_MLP_IN,
                      hook_out=HOOK_MLP_OUT, path=str(folder), extra={"transcode": transcode})


# -- detection ----------------------------------------------------------------------------------------------------


def _load_one(path: Path, layer_hint: int | None) -> tuple[str, list[Transcoder], str, dict[str, Any]]:
    if path.is_file() and path.suffix == ".npz":
        return "gemmascope", [_load_gemmascope(path, layer_hint)], path.parent.parent.name, {}
    if not path.is_dir():
        raise TranscoderFormatError(f"{path}: no such transcoder file or folder")
    names = {p.name for p in path.iterdir()}
    if "config.yaml" in names:
        try:
            cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise TranscoderFormatError(f"{path / 'config.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
        s = _load_circuit_tracer(path, cfg)
        return s.format, s.transcoders, s.name, s.settings
    if "W_enc_0.safetensors" in names:
        s = _load_clt(path, HOOK_RESID_MID, HOOK_MLP_OUT, {})
        return s.format, s.transcoders, s.name, s.settings
    if "layer_0.safetensors" in names or any(re.fullmatch(r"layer_\d+\.safetensors", n) for n in names):
        s = _load_circuit_tracer(path, {})
        return s.format, s.transcoders, s.name, s.settings
    if {"cfg.json", "sae_weights.safetensors"} <= names:
        return "saelens", [_load_saelens(path)], path.name, {}
    if {"cfg.json", "sae.safetensors"} <= names:
        return "sparsify", [_load_sparsify(path)], path.parent.name, {}
    if "params.npz" in names:
        return "gemmascope", [_load_gemmascope(path / "params.npz", layer_hint)], path.parent.name, {}
    subs = sorted(p for p in path.iterdir() if p.is_dir() and {"cfg.json", "sae.safetensors"} <= {q.name for q in p.iterdir()})
    if subs:
        return "sparsify", [_load_sparsify(p) for p in subs], path.name, {}
    raise TranscoderFormatError(
        f"{path}: unknown transcoder format (expected circuit-tracer config.yaml + layer_N.safetensors, "
        "W_enc_N.safetensors, SAELens cfg.json + sae_weights.safetensors, GemmaScope params.npz, or sparsify "
        "layers.N.mlp/sae.safetensors)")


def load_transcoders(paths: list[str | Path], layers: list[int] | None = None, *, lazy: bool = False) -> TranscoderSet:
    """Load every transcoder under `paths` (optionally only `layers`), sorted by layer; one format per set.

    `lazy`: each layer's weights are read and checked, then let go (`Transcoder.materialise` reads them again), so
    at most one layer's weights are in memory while loading."""
    token = _LAZY.set(lazy)
    try:
        return _load_transcoders(paths, layers)
    finally:
        _LAZY.reset(token)


def _load_transcoders(paths: list[str | Path], layers: list[int] | None) -> TranscoderSet:
    if not paths:
        raise TranscoderFormatError("no transcoders given (--transcoders PATH)")
    found: dict[int, Transcoder] = {}
    formats, names, settings = set(), [], {}
    for p in paths:
        fmt, tcs, name, extra = _load_one(Path(p), None)
        formats.add(fmt)
        names.append(name)
        settings.update({k: v for k, v in extra.items() if v is not None})
        for t in tcs:
            if t.layer in found:
                raise TranscoderFormatError(f"{p}: a second transcoder for layer {t.layer}")
            found[t.layer] = t
    if layers is not None:
        missing = sorted(set(layers) - set(found))
        if missing:
            raise TranscoderFormatError(
                f"{paths[0]}: no transcoder for layer(s) {missing}; available: {sorted(found)}")
        found = {k: v for k, v in found.items() if k in set(layers)}
    tcs = [found[k] for k in sorted(found)]
    widths = {t.d_model for t in tcs}
    if len(widths) > 1:
        raise TranscoderFormatError(f"{paths[0]}: transcoders disagree on d_model ({sorted(widths)})")
    return TranscoderSet(tcs, "+".join(sorted(formats)), names[0], settings)

