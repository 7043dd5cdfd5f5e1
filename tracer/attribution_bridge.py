"""The optional bridge to circuit-tracer: an attribution graph for a prompt on a featuredb transcoder folder.

Runs circuit-tracer's own `attribute`, `compute_graph_scores` and `create_graph_files` offline (its nnsight
backend, which knows Llama-style models such as the default SmolLM2), then writes the metadata featuredb's
`trace label` and `trace serve` need to map every feature node without flags: the scan
`{model_id}/{set_name}`, `feature_details.neuronpedia_source_set`, and the replacement and completeness scores.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from featuredb.errors import FeatureDBError
from featuredb.formats.graph_json import as_graph
from featuredb.graph_models import Graph


@dataclass
class AttributeOptions:
    """circuit-tracer's attribution and pruning options: its defaults, but at most 2,000 feature nodes.

    circuit-tracer's own default keeps every active feature (about 9,000 for a 9-token prompt over 30 layers
    of 2,048 features: 2.5 minutes on 2 CPU cores). Dropped features' edges leave the graph, so its completeness
    falls with the cap: on the demo's transcoders, "Fact: Dallas is in the state of" scores 0.81/0.46
    (completeness/replacement) at 2,000, 0.74/0.35 at 500 and 0.88/0.60 with all (bench/bench_graph.py).
    """

    max_feature_nodes: int | None = 2000
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 256
    node_threshold: float = 0.8
    edge_threshold: float = 0.98


@dataclass
class AttributedGraph:
    """A graph made by circuit-tracer (read from its JSON once, checked) and what the user wants to know about it."""

    graph: Graph
    replacement_score: float
    completeness_score: float
    top_predictions: list[tuple[str, float]]
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (without the graph itself)."""
        nodes = self.graph.nodes
        features = [n for n in nodes if n.feature_type in ("cross layer transcoder", "mlp reconstruction")]
        return {"slug": self.graph.metadata.slug, "prompt": self.graph.metadata.prompt,
                "nodes": len(nodes), "feature_nodes": len(features), "links": len(self.graph.links),
                "feature_layers": sorted({int(n.layer) for n in features}),
                "replacement_score": round(self.replacement_score, 4),
                "completeness_score": round(self.completeness_score, 4),
                "top_predictions": [[t, round(p, 4)] for t, p in self.top_predictions],
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def _circuit_tracer() -> Any:
    try:
        import circuit_tracer
    except ImportError:
        raise FeatureDBError("circuit-tracer is not installed: pip install 'featuredb[circuit-tracer]' "
                             "(make demo and make test build it into .venv)") from None
    return circuit_tracer


def transcoder_config(folder: str | Path) -> dict[str, Any]:
    """A featuredb (circuit-tracer per-layer) transcoder folder's config.yaml with every path made absolute."""
    folder = Path(folder).resolve()
    path = folder / "config.yaml"
    if not path.is_file():
        raise FeatureDBError(f"{folder}: no config.yaml (train transcoders with featuredb train)")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if cfg.get("model_kind", "transcoder_set") != "transcoder_set" or "transcoders" not in cfg:
        raise FeatureDBError(f"{path}: trace attribute needs a per-layer set listing every layer under 'transcoders'")
    paths = []
    for p in cfg["transcoders"]:
        q = Path(p) if Path(p).is_absolute() else folder / p
        if Path(p).is_absolute() and (folder / Path(p).name).is_file():
            q = folder / Path(p).name  # the file beside config.yaml (the folder may have been moved)
        if not q.exists():
            raise FeatureDBError(f"{path}: {p} does not exist")
        paths.append(str(q))
    cfg["transcoders"] = paths
    return cfg


def model_for_transcoders(cfg: dict[str, Any], model: str | None = None) -> tuple[str, str]:
    """(model folder, model id): --model, else the folder config.yaml names, else its model id ('default' too)."""
    from ingest.model_loading import resolve_model_path  # the bridge: tracer reaches ingest only here

    if model:
        return resolve_model_path(model)
    named = cfg.get("model_name")
    if named and Path(str(named)).is_dir():
        path, default_id = resolve_model_path(str(named))
        return path, str(cfg.get("model_id") or default_id)
    path, default_id = resolve_model_path(str(cfg.get("model_id") or named or "default"))
    return path, str(cfg.get("model_id") or default_id)


class CircuitTracerSession:
    """circuit-tracer's ReplacementModel on a featuredb transcoder folder, loaded once for many prompts."""

    def __init__(self, transcoders: str | Path, *, model_path: str, model_id: str, set_name: str,
                 options: AttributeOptions | None = None, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _circuit_tracer()
        import torch
        from circuit_tracer import ReplacementModel
        from circuit_tracer.utils.hf_utils import load_transcoders

        self.options = options or AttributeOptions()
        self.transcoders = Path(transcoders).resolve()
        self.set_name = set_name
        self.scan = f"{model_id}/{set_name}"
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cfg = transcoder_config(transcoders)
        cfg["scan"] = self.scan
        t0 = time.perf_counter()
        tset = load_transcoders(cfg, device=dev, dtype=torch.float32, lazy_decoder=False)
        self.model = ReplacementModel.from_pretrained_and_transcoders(model_path, tset, backend="nnsight",
                                                                      device=dev, dtype=torch.float32)
        self.load_seconds = time.perf_counter() - t0

    def attribute(self, prompt: str, slug: str) -> AttributedGraph:
        """circuit-tracer's pruned graph JSON for `prompt`, with featuredb's metadata and the graph scores."""
        from circuit_tracer import attribute
        from circuit_tracer.graph import compute_graph_scores
        from circuit_tracer.utils.create_graph_files import create_graph_files

        o = self.options
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        raw = attribute(prompt, self.model, max_n_logits=o.max_n_logits, desired_logit_prob=o.desired_logit_prob,
                        batch_size=o.batch_size, max_feature_nodes=o.max_feature_nodes)
        timings["attribute"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        replacement, completeness = (float(x) for x in compute_graph_scores(raw))
        timings["scores"] = time.perf_counter() - t0
        top = [(str(t.token_str), float(p)) for t, p in zip(raw.logit_targets, raw.logit_probabilities.tolist())]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="featuredb-graph-") as tmp:
            create_graph_files(raw, slug, tmp, scan=self.scan, node_threshold=o.node_threshold,
                               edge_threshold=o.edge_threshold)
            graph = json.loads((Path(tmp) / f"{slug}.json").read_text(encoding="utf-8"))
        timings["graph_files"] = time.perf_counter() - t0
        meta = graph["metadata"]
        meta["feature_details"] = {**(meta.get("feature_details") or {}), "neuronpedia_source_set": self.set_name}
        meta["replacement_score"] = replacement
        meta["completeness_score"] = completeness
        meta["info"] = {**(meta.get("info") or {}),
                        "generator": {"name": "featuredb trace attribute (circuit-tracer)",
                                      "version": str(_circuit_tracer().__version__)},
                        "create_time_ms": int(time.time() * 1000)}
        meta["generation_settings"] = {**asdict(o), "transcoders": str(self.transcoders)}
        return AttributedGraph(as_graph(graph, slug), replacement, completeness, top, timings)
