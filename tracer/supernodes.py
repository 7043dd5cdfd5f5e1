"""Propose supernodes: groups of feature nodes at one token that share meaning, edges and decoder direction.

Similarity of two feature nodes at the same position is a weighted mean of the signals both have:
label cosine (MiniLM), signed edge-profile cosine (incoming and outgoing weights, as proposed in
Neuronpedia issue 145 / PR 229) and decoder-direction cosine. Nodes at different positions never
share a supernode, as in Neuronpedia's hand-made ones. Each position's nodes are clustered by
average linkage and cut at `threshold`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix

from featuredb.formats.graph_json import feature_node_dicts, is_feature_node

WEIGHTS = {"label": 0.45, "edges": 0.35, "decoder": 0.2}
LABEL_CHARS = 40


@dataclass
class SupernodeOptions:
    """--threshold, --min-size, --max-supernodes and the signal weights."""

    threshold: float = 0.35
    min_size: int = 2
    max_supernodes: int = 50
    weights: dict[str, float] = field(default_factory=lambda: dict(WEIGHTS))


@dataclass
class Supernode:
    """A proposed group: its short label and member node ids."""

    label: str
    node_ids: list[str]
    score: float


def _edge_profiles(graph: dict[str, Any], ids: list[str]) -> csr_matrix:
    """Rows: each node's signed incoming then outgoing link weights over all graph nodes, L2-normalised."""
    col = {n["node_id"]: i for i, n in enumerate(graph["nodes"])}
    row = {nid: i for i, nid in enumerate(ids)}
    n_all = len(graph["nodes"])  # node ids may repeat (circuit-tracer repeats some); columns follow positions
    rows, cols, vals = [], [], []
    for link in graph["links"]:
        s, t, w = link.get("source"), link.get("target"), float(link.get("weight") or 0.0)
        if t in row and s in col:
            rows.append(row[t])
            cols.append(col[s])
            vals.append(w)
        if s in row and t in col:
            rows.append(row[s])
            cols.append(n_all + col[t])
            vals.append(w)
    m = csr_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(len(ids), 2 * n_all))
    m.sum_duplicates()
    m.data[~np.isfinite(m.data)] = 0.0  # finite weights near float max can sum to infinity
    # divide by each row's largest |weight| first, so squaring weights near the float limit cannot overflow
    scale = np.asarray(abs(m).max(axis=1).todense()).ravel()
    scale[scale == 0] = 1.0
    m = csr_matrix(m.multiply(1.0 / scale[:, None]))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return csr_matrix(m.multiply(1.0 / norms[:, None]), dtype=np.float32)


def _unit_rows(vectors: dict[str, np.ndarray], ids: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(matrix of unit rows, availability mask) for the ids that have a vector; None if none has."""
    have = np.array([i in vectors for i in ids])
    if not have.any():
        return None
    dim = len(next(iter(vectors.values())))
    out = np.zeros((len(ids), dim), dtype=np.float32)
    for k, i in enumerate(ids):
        if have[k]:
            v = np.asarray(vectors[i], dtype=np.float32)
            out[k] = v / (np.linalg.norm(v) or 1.0)
    return out, have


def similarity(graph: dict[str, Any], ids: list[str], label_vectors: dict[str, np.ndarray],
               decoder_vectors: dict[str, np.ndarray] | None, weights: dict[str, float],
               profiles: csr_matrix | None = None) -> np.ndarray:
    """The combined similarity matrix of `ids` (all at one position)."""
    n = len(ids)
    total = np.zeros((n, n), dtype=np.float32)
    weight = np.zeros((n, n), dtype=np.float32)
    prof = profiles if profiles is not None else _edge_profiles(graph, ids)
    has_edges = np.asarray(prof.getnnz(axis=1) > 0)
    signals = [("edges", (prof @ prof.T).toarray().astype(np.float32), has_edges)]
    for name, vecs in (("label", label_vectors), ("decoder", decoder_vectors or {})):
        unit = _unit_rows(vecs, ids)
        if unit is not None:
            signals.append((name, unit[0] @ unit[0].T, unit[1]))
    for name, sim, have in signals:
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        mask = np.outer(have, have).astype(np.float32) * w
        total += sim * mask
        weight += mask
    return np.where(weight > 0, total / np.maximum(weight, 1e-9), 0.0)


def _short_label(members: list[str], clerps: dict[str, str], label_vectors: dict[str, np.ndarray]) -> str:
    """The member label closest to the others (by MiniLM), else the most common one, cut at a word boundary."""
    labelled = [m for m in members if clerps.get(m)]
    if not labelled:
        return ""
    with_vec = [m for m in labelled if m in label_vectors]
    if len(with_vec) >= 2:
        mat = np.stack([label_vectors[m] for m in with_vec])
        best = with_vec[int(np.argmax((mat @ mat.T).sum(axis=1)))]
    else:
        best = Counter(clerps[m] for m in labelled).most_common(1)[0][0]
        best = next(m for m in labelled if clerps[m] == best)
    text = clerps[best].strip()
    if len(text) > LABEL_CHARS:
        text = text[:LABEL_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return text


def propose_supernodes(graph: dict[str, Any], label_vectors: dict[str, np.ndarray],
                       decoder_vectors: dict[str, np.ndarray] | None = None,
                       options: SupernodeOptions | None = None, node_ids: list[str] | None = None) -> list[Supernode]:
    """Supernodes over the graph's feature nodes (or `node_ids`), best first (by summed influence, then size)."""
    opt = options or SupernodeOptions()
    by_id = feature_node_dicts(graph)
    ids = node_ids if node_ids is not None else [n["node_id"] for n in graph["nodes"] if is_feature_node(n)]
    by_pos: dict[int, list[str]] = defaultdict(list)
    for i in ids:
        by_pos[int(by_id[i].get("ctx_idx") or 0)].append(i)
    all_profiles = _edge_profiles(graph, ids)
    row = {nid: k for k, nid in enumerate(ids)}
    clerps = {i: str(by_id[i].get("clerp") or "") for i in ids}
    groups: list[list[str]] = []
    for pos, members in sorted(by_pos.items()):
        if len(members) < max(2, opt.min_size):
            continue
        prof = all_profiles[[row[m] for m in members]]
        sim = similarity(graph, members, label_vectors, decoder_vectors, opt.weights, profiles=prof)
        dist = np.clip(1.0 - sim, 0.0, 2.0)
        condensed = dist[np.triu_indices(len(members), k=1)]
        labels = fcluster(linkage(condensed, method="average"), t=1.0 - opt.threshold, criterion="distance")
        clusters: dict[int, list[str]] = defaultdict(list)
        for m, c in zip(members, labels):
            clusters[int(c)].append(m)
        groups += [g for g in clusters.values() if len(g) >= opt.min_size]
    out = []
    for g in groups:
        influence = sum(abs(float(by_id[m].get("influence") or 0.0)) for m in g)
        out.append(Supernode(_short_label(g, clerps, label_vectors) or f"{len(g)} features at {by_id[g[0]]['ctx_idx']}",
                             g, influence))
    out.sort(key=lambda s: (-s.score, -len(s.node_ids), s.node_ids[0]))
    return out[:opt.max_supernodes]
