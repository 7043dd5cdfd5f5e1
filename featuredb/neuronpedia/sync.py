"""Sync between the store and a Neuronpedia API: pull features, pull graph labels, push labels and uploads."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import httpx
import pyarrow as pa
from tqdm import tqdm

from featuredb.int_ranges import parse_int_ranges
from featuredb.errors import FeatureDBError
from featuredb.formats.graph_json import as_graph, feature_nodes, graph_model, graph_source_set
from featuredb.graph_models import Graph, Node
from featuredb.identity import source_id
from featuredb.models import Feature
from featuredb.neuronpedia.client import NeuronpediaClient
from featuredb.store.export_tables import source_densities, upload_activation_rows, upload_explanation_rows
from featuredb.store.reads import Scope, feature_indices
from featuredb.store.schema import ACTIVATIONS, EXPLANATIONS, FEATURES, MODELS, SOURCE_SETS, SOURCES
from featuredb.store.feature_store import FeatureStore


@dataclass
class PullReport:
    """What a pull fetched, skipped and could not find."""

    requested: int = 0
    skipped: int = 0
    fetched: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (missing ids capped at 20)."""
        d = asdict(self)
        d["missing_count"] = len(self.missing)
        d["missing"] = self.missing[:20]
        return d


RELATION_TABLES = {"model": MODELS, "source": SOURCES, "sourceSet": SOURCE_SETS}  # GET feature's includes


def feature_tables(features: list[Feature]) -> dict[str, pa.Table]:
    """Store tables (features, activations, explanations, and the model, source and source-set rows the API
    includes with each feature) from API features."""
    feat_cols, act_cols, exp_cols = set(FEATURES.columns), set(ACTIVATIONS.columns), set(EXPLANATIONS.columns)
    feats, acts, exps = [], [], []
    related: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in RELATION_TABLES}
    for f in features:
        d = f.model_dump()
        for name, table in RELATION_TABLES.items():
            if isinstance(d.get(name), dict):
                row = {k: v for k, v in d[name].items() if k in table.columns}
                related[name][json.dumps([row.get(k) for k in table.key], default=str)] = row
        key = {"modelId": d["modelId"], "layer": d["layer"], "index": int(d["index"])}
        feats.append({**{k: v for k, v in d.items() if k in feat_cols}, **key})
        acts.extend({**{k: v for k, v in a.items() if k in act_cols}, **key} for a in d.get("activations") or [])
        exps.extend({**{k: v for k, v in e.items() if k in exp_cols}, **key} for e in d.get("explanations") or [])
    out = {"features": pa.Table.from_pylist(feats)}
    if acts:
        out["activations"] = pa.Table.from_pylist(acts)
    if exps:
        out["explanations"] = pa.Table.from_pylist(exps)
    for name, table in RELATION_TABLES.items():
        rows = [r for r in related[name].values() if all(r.get(k) is not None for k in table.key)]
        if rows:
            out[table.name] = pa.Table.from_pylist(rows)
    return out


def _present(store: FeatureStore, model: str, source: str) -> set[int]:
    return set(feature_indices(store, Scope(model, source)))


def pull_features(client: NeuronpediaClient, store: FeatureStore, wanted: list[tuple[str, str, int]], *,
                  refresh: bool = False, batch: int = 64, progress: bool | None = None) -> PullReport:
    """Fetch features (with activations and explanations) into the store; one commit per batch, so it resumes."""
    started = time.perf_counter()
    report = PullReport(requested=len(wanted))
    todo = wanted
    if not refresh:
        have: dict[tuple[str, str], set[int]] = {}
        for m, s, _ in wanted:
            if (m, s) not in have:
                have[(m, s)] = _present(store, m, s)
        todo = [w for w in wanted if w[2] not in have[(w[0], w[1])]]
    report.skipped = len(wanted) - len(todo)
    bar = tqdm(total=len(todo), unit="feature", desc="pull", disable=None if progress is None else not progress)
    try:
        for chunk, got in zip((todo[i:i + batch] for i in range(0, len(todo), batch)),
                              client.iter_features(todo, batch=batch)):
            returned = {(f.modelId, f.layer, int(f.index)) for f in got}
            report.missing.extend(f"{m}/{s}/{i}" for m, s, i in chunk if (m, s, i) not in returned)
            if got:
                store.upsert(feature_tables(got))  # one transaction: a feature arrives whole or not at all
            report.fetched += len(got)
            bar.update(len(chunk))
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def parse_indices(spec: str) -> list[int]:
    """The shared range grammar ('A-B', 'A,B,C', '0-3,10'), or a file with one index per line."""
    from pathlib import Path

    p = Path(spec)
    if p.is_file():
        out = []
        for n, line in enumerate(p.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    out.append(int(line.strip()))
                except ValueError:
                    raise FeatureDBError(f"{p}:{n}: not a feature index: {line.strip()!r}") from None
        return out
    return parse_int_ranges(spec, "--indices")


def graph_features(graph: Graph | dict[str, Any], model: str | None, source_set: str | None) -> list[tuple[str, str, int]]:
    """(model, source, index) of every distinct feature a graph uses."""
    set_name = graph_source_set(graph, source_set)
    if not set_name:
        raise FeatureDBError("the graph names no source set (metadata.feature_details.neuronpedia_source_set); "
                             "pass --source-set")
    m = graph_model(graph, model)
    seen: dict[tuple[str, str, int], None] = {}
    for n in feature_nodes(graph):
        seen[(m, source_id(n.layer, set_name), n.index)] = None
    return list(seen)


def subgraph_body(graph: Graph | dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Neuronpedia subgraph-save body: clerps [[featureId, label]], supernodes and pinnedIds from the graph."""
    graph = as_graph(graph)
    clerps = []
    for node in graph.nodes:
        label = node.clerp.strip()
        if label and node.feature is not None and node.feature_type not in ("embedding", "logit"):
            clerps.append([Node.feature_id(node.layer, node.feature, node.ctx_idx), label])
    qp = graph.qParams
    return {"modelId": graph_model(graph, model), "slug": graph.metadata.slug,
            "pinnedIds": list(qp.pinnedIds), "supernodes": list(qp.supernodes), "clerps": clerps}


def upload_payload(store: FeatureStore, model: str, source: str) -> list[dict[str, Any]]:
    """Features of one source in Neuronpedia's upload-batch shape (those with at least one activation)."""
    feats = source_densities(store, model, source)
    acts: dict[int, list[dict[str, Any]]] = {}
    for idx, tokens, values, bmin, bmax, bc in upload_activation_rows(store, model, source):
        interval = bmin is not None and bmin >= 0
        acts.setdefault(idx, []).append({"tokens": tokens, "values": values,
                                         "quantileMin": bmin if interval else None,
                                         "quantileMax": bmax if interval else None,
                                         "quantileFraction": bc if interval else None})
    exps: dict[int, list[dict[str, Any]]] = {}
    for idx, text, method, mname in upload_explanation_rows(store, model, source):
        exps.setdefault(idx, []).append({"text": text, "methodName": method, "modelName": mname})
    out = []
    for idx, density in feats:
        if idx not in acts:
            continue
        item: dict[str, Any] = {"index": idx, "activations": acts[idx]}
        if density is not None and 0 <= density <= 1:
            item["density"] = density
        if idx in exps:
            item["explanations"] = exps[idx]
        out.append(item)
    return out


def dry_run_transport(out: TextIO | None = None) -> httpx.MockTransport:
    """A transport that prints each request (method, URL, JSON body; never headers) and answers success."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content.decode("utf-8", errors="replace") if request.content else ""
        try:
            shown = json.dumps(json.loads(body), separators=(",", ":")) if body else ""
        except ValueError:
            shown = f"<{len(request.content)} bytes>"
        if len(shown) > 400:
            shown = shown[:400] + f"... ({len(body)} bytes)"
        (out or sys.stdout).write(f"DRY-RUN {request.method} {request.url} {shown}".rstrip() + "\n")
        if request.url.path.endswith("/signed-put"):
            return httpx.Response(200, json={"url": "https://dry-run.invalid/graph.json", "putRequestId": "dry-run"})
        if request.url.path.endswith(("/list", "/list-owned", "/features")):
            return httpx.Response(200, json=[])
        return httpx.Response(200, json={"message": "dry run"})

    return httpx.MockTransport(handler)


def make_client(base_url: str, api_key: str | None, *, dry_run: bool, concurrency: int = 8,
                out: TextIO | None = None) -> NeuronpediaClient:
    """A client for the CLI: real, or printing its requests with --dry-run."""
    return NeuronpediaClient(base_url, api_key, concurrency=concurrency,
                             transport=dry_run_transport(out) if dry_run else None)

