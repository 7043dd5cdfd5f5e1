"""`trace label`: map a graph's features to the store, write clerps, propose supernodes, pin them, add clerps."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from featuredb.formats.graph_json import as_graph
from featuredb.graph_models import Graph
from featuredb.store.graph_identity import graph_model
from featuredb.neuronpedia.client import NeuronpediaClient
from featuredb.neuronpedia.sync import subgraph_body
from featuredb.store.feature_store import FeatureStore
from tracer.decoders import decoder_vectors
from tracer.example_vectors import example_windows
from tracer.graph_labelling import LabelReport, label_graph
from tracer.label_vectors import label_vectors
from tracer.node_mapping import map_nodes
from tracer.supernodes import Grouping, Supernode, SupernodeOptions, propose


@dataclass
class TraceLabelResult:
    """The labelled graph (changed in place), what labelling did, the supernodes proposed and how."""

    graph: Graph
    report: LabelReport
    supernodes: list[Supernode] = field(default_factory=list)
    grouping: Grouping | None = None
    store_note: str = ""  # why the store's labels and decoders were not used, if they were not
    evidence: Any = None  # supernode_evidence.EvidenceReport when a model was at hand
    evidence_note: str = "not computed: no model and transcoders at hand"
    dropped: list[Supernode] = field(default_factory=list)  # proposals whose effect was not beyond random

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the graph)."""
        return {**self.report.as_dict(),
                "supernodes": [{"label": s.label, "node_ids": s.node_ids, "positions": s.positions, "kind": s.kind,
                                "score": round(s.score, 4) if math.isfinite(s.score) else None}
                               for s in self.supernodes],
                "grouping": self.grouping.as_dict() if self.grouping else None,
                "evidence": self.evidence.as_dict() if self.evidence is not None else self.evidence_note,
                "dropped_without_evidence": [{"label": s.label, "node_ids": s.node_ids} for s in self.dropped],
                **({"store_note": self.store_note} if self.store_note else {})}


def existing_clerps(value: Any) -> list[list[str]]:
    """qParams.clerps as [[key, label], ...] from a list or a JSON string; anything else is no clerps."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            return []
    if not isinstance(value, list):
        return []
    return [[str(p[0]), str(p[1])] for p in value if isinstance(p, (list, tuple)) and len(p) == 2]


def _store_lacks(store: FeatureStore | None, graph: Graph, model: str | None) -> str:
    """Why the store cannot label this graph ("" when it can): no store, or not the graph's model."""
    if store is None:
        return "no store"
    if model:  # asked for by name: map_nodes says what is wrong with it
        return ""
    from featuredb.store.graph_identity import resolve_model
    from featuredb.store.reads import Scope, has_features

    want = resolve_model(store.con, graph, None)
    if not has_features(store, Scope(want)):
        return f"the store has no features of model {want!r}"
    return ""


def trace_label(store: FeatureStore | None, graph: Graph | dict[str, Any], *, where: str = "graph",
                model: str | None = None, source_set: str | None = None, overwrite: bool = False,
                online: NeuronpediaClient | None = None,
                options: SupernodeOptions | None = None, use_decoders: bool = True, evidence_model: Any = None,
                keep_weak: bool = False, n_random: int = 8) -> TraceLabelResult:
    """Label `graph` from `store` and propose supernodes into its qParams (supernodes, pinnedIds, clerps).

    The graph is checked first (featuredb.formats.graph_json.check_graph): a malformed one is a BadInputError
    naming `where` and the field, before anything is changed. A graph the store cannot label (no store, or
    another model's) is still grouped, from its own clerps, edges and influence; store_note says so. With
    `evidence_model` (circuit-tracer's ReplacementModel of the graph), every proposal is zeroed against random
    matched sets and those not beyond random are dropped (kept, marked "(weak)", with keep_weak). Graph JSON (a
    dict) is made a Graph here and, labelled, written back into the dict, so a caller holding JSON sees it too."""
    model_graph = as_graph(graph, where)
    result = _trace_label(store, model_graph, where=where, model=model, source_set=source_set, overwrite=overwrite,
                          online=online, options=options, use_decoders=use_decoders, evidence_model=evidence_model,
                          keep_weak=keep_weak, n_random=n_random)
    if isinstance(graph, dict):
        graph.clear()
        graph.update(model_graph.to_json())
    return result


def _trace_label(store: Any, graph: Graph, *, where: str, model: str | None, source_set: str | None,
                 overwrite: bool, online: Any, options: SupernodeOptions | None, use_decoders: bool,
                 evidence_model: Any, keep_weak: bool, n_random: int) -> TraceLabelResult:
    """trace_label on a checked Graph."""
    note = _store_lacks(store, graph, model)
    qp = graph.qParams
    existing = [list(s) for s in qp.supernodes]  # a person's supernodes stay; ours are added
    taken = {nid for s in existing for nid in s[1:]}
    by_id = graph.feature_node_by_id()
    if note:
        report = LabelReport(graph_model(graph), "")
        ids = [n.node_id for n in graph.feature_nodes() if n.node_id not in taken]
        report.feature_nodes = len(ids)
        mapping = None
    else:
        mapping = map_nodes(store, graph, where=where, model=model, source_set=source_set)
        report = label_graph(store, graph, mapping, overwrite=overwrite, online=online)
        ids = [m.node.node_id for m in mapping.mapped if m.node.node_id not in taken]
        ids += [m.node.node_id for m in mapping.absent if m.node.node_id not in taken]
    labels = {i: by_id[i].clerp.strip() for i in ids}
    vectors = label_vectors(store, labels)
    decoders = decoder_vectors(store, mapping) if use_decoders and mapping is not None else {}
    windows = example_windows(store, mapping) if mapping is not None else {}
    grouping = propose(graph, vectors, decoders, options, node_ids=ids, windows=windows)
    proposed = grouping.supernodes
    evidence, dropped = None, []
    if evidence_model is not None and proposed:
        from tracer.supernode_evidence import supernode_evidence

        evidence = supernode_evidence(evidence_model, graph, proposed, n_random=n_random)
        strong = {tuple(e.node_ids) for e in evidence.supernodes if e.beyond_random}
        dropped = [s for s in proposed if tuple(s.node_ids) not in strong]
        if keep_weak:
            for s in dropped:
                s.label += " (weak)"
            dropped = []
        proposed = [s for s in proposed if s not in dropped]
    qp.supernodes = existing + [[s.label, *s.node_ids] for s in proposed]
    pinned = list(qp.pinnedIds)
    seen = set(pinned)
    for s in proposed:
        for nid in s.node_ids:
            if nid not in seen:
                pinned.append(nid)
                seen.add(nid)
    qp.pinnedIds = pinned
    if mapping is not None:
        # A JSON string, as circuit-tracer's and Neuronpedia's graph frontends read it
        # (JSON.parse(qParams.clerps)); labels a person saved there before (the frontend keys them by feature) stay.
        kept = existing_clerps(qp.clerps)
        ours = [c for c in subgraph_body(graph, mapping.model)["clerps"] if c[0] not in {k for k, _ in kept}]
        qp.clerps = json.dumps(kept + ours, ensure_ascii=False)
    result = TraceLabelResult(graph, report, proposed, grouping, note, evidence, dropped=dropped)
    if evidence_model is not None:
        result.evidence_note = "" if evidence is not None else "no supernodes to test"
    return result
