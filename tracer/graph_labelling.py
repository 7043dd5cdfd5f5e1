"""Fill every mapped feature node's `clerp` from the store (else baseline labels, else Neuronpedia with --online)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from featuredb.graph_models import Graph
from featuredb.neuronpedia.client import NeuronpediaClient
from featuredb.store.feature_store import FeatureStore
from tracer.feature_labels import best_explanation, store_labels
from tracer.node_mapping import NodeMapping

ONLINE_BATCH = 64


@dataclass
class LabelReport:
    """What labelling did to a graph."""

    model: str
    source_set: str
    feature_nodes: int = 0
    mapped: int = 0
    labelled: int = 0  # clerps written
    kept: int = 0  # non-empty clerps left alone (no --overwrite)
    unlabelled: list[str] = field(default_factory=list)  # mapped nodes no label was found for
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)  # typeName of the labels written

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"model": self.model, "source_set": self.source_set, "feature_nodes": self.feature_nodes,
                "mapped": self.mapped, "labelled": self.labelled, "kept": self.kept,
                "unlabelled": self.unlabelled, "unmapped": [{"node_id": n, "reason": r} for n, r in self.unmapped],
                "by_type": self.by_type}


def _online_labels(client: NeuronpediaClient, model: str, wanted: list[tuple[str, int, str]]) -> dict[str, tuple[str, str]]:
    """feature_key -> label from Neuronpedia's POST /api/features for (source, index, key) triples."""
    out: dict[str, tuple[str, str]] = {}
    by_ref = {(s, str(i)): k for s, i, k in wanted}
    refs = [(model, s, i) for s, i, _ in wanted]
    for batch in client.iter_features(refs, batch=ONLINE_BATCH, max_acts=0):
        for f in batch:
            label = best_explanation(f.explanations)
            key = by_ref.get((f.layer, str(f.index)))
            if label and key:
                out[key] = label
    return out


def label_graph(store: FeatureStore | None, graph: Graph, mapping: NodeMapping, *, overwrite: bool = False,
                online: NeuronpediaClient | None = None) -> LabelReport:
    """Write `clerp` on the graph's mapped feature nodes in place; `online` is a NeuronpediaClient or None."""
    report = LabelReport(mapping.model, mapping.source_set, unmapped=list(mapping.unmapped))
    report.feature_nodes = len(mapping.mapped) + len(mapping.unmapped)
    report.mapped = len(mapping.mapped)
    by_id = graph.feature_node_by_id()
    def needs(m: Any) -> bool:
        return overwrite or not by_id[m.node.node_id].clerp.strip()

    todo = [m for m in mapping.mapped if needs(m)]
    report.kept = len(mapping.mapped) - len(todo)
    labels = store_labels(store, sorted({m.key for m in todo}))
    if online is not None:
        todo += [m for m in mapping.absent if needs(m)]  # features only Neuronpedia may know
        missing = sorted({(m.source, m.node.index, m.key) for m in todo if m.key not in labels})
        if missing:
            labels.update(_online_labels(online, mapping.model, missing))
    mapped_ids = {m.node.node_id for m in mapping.mapped}
    types: Counter[str] = Counter()
    for m in todo:
        label = labels.get(m.key)
        if label is None:
            if m.node.node_id in mapped_ids:
                report.unlabelled.append(m.node.node_id)
            continue
        by_id[m.node.node_id].clerp = label[0]
        types[label[1]] += 1
        report.labelled += 1
    report.by_type = dict(types.most_common())
    return report
