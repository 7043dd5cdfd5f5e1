"""The main job's circuit-tracing step: make, label and group real attribution graphs on the demo's transcoders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from featuredb.graph_models import Graph
from featuredb.store.feature_store import FeatureStore
from tracer.attribution_bridge import AttributeOptions, CircuitTracerSession, model_for_transcoders, transcoder_config
from tracer.trace_label import trace_label

# "Dallas is in the state of" -> " Texas" (p 0.86 on SmolLM2-135M-Instruct); "capital of France" -> " Paris" (0.77)
DEMO_PROMPTS = {"dallas-texas": "Fact: Dallas is in the state of", "france-paris": "The capital of France is"}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)


def make_demo_graphs(transcoders: str, db: str, out_dir: str, *, echo: Callable[[str], None], quiet: bool = False,
                     prompts: dict[str, str] | None = None, device: str | None = None,
                     before_label: Callable[[Graph], dict[str, Any]] | None = None) -> dict[str, Any]:
    """For each prompt: circuit-tracer's graph, labelled and grouped from the store, written to out_dir/{slug}.json.

    `before_label(graph)` runs between attribution and labelling (the demo's `--endpoint` explains the graph's
    features there); what it returns is kept in the graph's summary."""
    cfg = transcoder_config(transcoders)
    model_path, model_id = model_for_transcoders(cfg)
    session = CircuitTracerSession(transcoders, model_path=model_path, model_id=model_id,
                                   set_name=str(cfg.get("set_name")), options=AttributeOptions(), device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"load_seconds": round(session.load_seconds, 2), "graphs": []}
    for slug, prompt in (prompts or DEMO_PROMPTS).items():
        made = session.attribute(prompt, slug)
        explained = before_label(made.graph) if before_label else None
        with FeatureStore(db, read_only=True) as store:
            t0 = time.perf_counter()
            labelled = trace_label(store, made.graph, where=slug, evidence_model=session.model)
            made.timings["label_and_group"] = time.perf_counter() - t0
        _write(out / f"{slug}.json", made.graph.to_json())
        if labelled.evidence is not None:
            _write(out / f"{slug}.evidence.json", labelled.evidence.as_dict())
            made.timings["evidence"] = labelled.evidence.seconds
        summary = {**made.summary(), "file": str(out / f"{slug}.json"),
                   "supernodes": [[s.label, len(s.node_ids)] for s in labelled.supernodes],
                   "dropped_without_evidence": len(labelled.dropped),
                   "unmapped": len(labelled.report.unmapped)}
        if explained is not None:
            summary["explained"] = explained
        results["graphs"].append(summary)
        if not quiet:
            _print(summary, echo)
    return results


def _print(s: dict[str, Any], echo: Callable[[str], None]) -> None:
    layers = s["feature_layers"]
    echo(f'\n   "{s["prompt"]}" -> ' + ", ".join(f"{t!r} {p:.2f}" for t, p in s["top_predictions"][:3]))
    echo(f"   {s['nodes']} nodes, {s['feature_nodes']} features from {len(layers)} layers "
         f"({layers[0] if layers else '-'}-{layers[-1] if layers else '-'}), {s['links']} links; "
         f"replacement {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f}; "
         f"attribution {s['timings']['attribute']:.1f}s, labels + supernodes {s['timings']['label_and_group']:.2f}s")
    kept = len(s["supernodes"])
    echo(f"   {kept} of {kept + s['dropped_without_evidence']} supernodes beyond random when zeroed: "
         + ("; ".join(f"{label!r} ({n})" for label, n in s["supernodes"][:6]) or "none")
         + (f"; ... (all in {s['file'].removesuffix('.json')}.evidence.json)" if kept > 6 else ""))
