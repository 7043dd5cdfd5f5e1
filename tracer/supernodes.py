"""Propose supernodes: groups of influential feature nodes that share meaning, edges and decoder direction.

Only nodes that matter are grouped: the most influential feature nodes that together carry `influence`
(default 0.95) of the feature nodes' influence on the logits, never the sink position 0
(<bos>/<|im_start|>, where every attention head parks). A node's own influence is read from circuit-tracer's
`influence` field, the cumulative share of the total reached by all nodes at least as influential (a
pruned graph keeps a prefix of that order, so consecutive differences are each node's own share).
Similarity of two feature nodes is a weighted mean of the signals both have: label cosine (MiniLM),
signed edge-profile cosine (incoming and outgoing weights, as proposed in Neuronpedia issue 145 /
PR 229), decoder-direction cosine, shared top examples (tracer.example_vectors) and layer proximity.
Each position's nodes (from every layer) are clustered by average linkage and cut at `threshold`;
clusters over `max_size` are cut finer; groups at nearby positions (within `near`) merge where their
average linkage reaches `threshold`, as in Neuronpedia's hand-made subgraphs. At most
`max_per_position` groups per position are kept, the most influential first. Every node left out is
counted with its reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix

from featuredb.graph_models import Graph, coerce_graph
from tracer.example_vectors import window_rows
from tracer.supernode_names import supernode_name

WEIGHTS = {"label": 0.45, "edges": 0.35, "decoder": 0.2, "examples": 0.3, "layers": 0.2}
LAYER_SCALE = 10.0  # layer proximity exp(-|Δlayer| / LAYER_SCALE)
SINK_POSITION = 0


@dataclass
class SupernodeOptions:
    """--threshold, --min-size, --max-size, --max-per-position, --influence, --near, --max-supernodes, weights."""

    threshold: float = 0.4
    min_size: int = 2
    max_size: int = 8
    max_per_position: int = 4
    influence: float = 0.95  # share of the feature nodes' influence whose nodes are grouped
    near: int = 1  # groups at positions this far apart may merge
    max_supernodes: int = 50
    weights: dict[str, float] = field(default_factory=lambda: dict(WEIGHTS))


@dataclass
class NodeSignals:
    """What is known of each node besides the graph's edges: label and decoder vectors, hashed top-example
    windows (tracer.example_vectors) and layer numbers."""

    labels: dict[str, np.ndarray]
    decoders: dict[str, np.ndarray] | None = None
    windows: dict[str, np.ndarray] | None = None
    layers: dict[str, int] | None = None


@dataclass
class Supernode:
    """A proposed group: its short label, member node ids (most influential first) and summed own influence."""

    label: str
    node_ids: list[str]
    score: float
    positions: list[int] = field(default_factory=list)
    kind: str = "content"  # or the artefact kind its members' labels share ("punctuation", "start of text", ...)


@dataclass
class Grouping:
    """The proposals and, for every candidate node left ungrouped, why."""

    supernodes: list[Supernode]
    considered: int  # feature nodes looked at
    ungrouped: dict[str, int] = field(default_factory=dict)  # reason -> nodes
    signals: dict[str, int] = field(default_factory=dict)  # signal -> nodes that have it

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary of what was left out and which signals there were."""
        return {"considered": self.considered, "grouped": sum(len(s.node_ids) for s in self.supernodes),
                "ungrouped": dict(self.ungrouped), "signals": dict(self.signals)}


def own_influence(graph: Graph) -> dict[str, float]:
    """node_id -> its own share of the logits' influence: the step in circuit-tracer's cumulative `influence`
    from the node ranked just above it (over every node of the graph that has one); {} when the values are
    mostly ties (a hand-made graph's placeholders), which leaves every node in."""
    ranked = sorted((float(n.influence), str(n.node_id)) for n in graph.nodes
                    if isinstance(n.influence, (int, float)) and np.isfinite(n.influence))
    if len({v for v, _ in ranked}) * 2 < len(ranked):  # mostly ties: placeholders, not circuit-tracer's values
        return {}
    out, prev = {}, 0.0
    tied: dict[float, list[str]] = defaultdict(list)
    for cum, nid in ranked:
        tied[cum].append(nid)
    for cum, nids in tied.items():  # nodes at one cumulative value share its step
        for nid in nids:
            out[nid] = max(0.0, cum - prev) / len(nids)
        prev = cum
    return out


def _influential(ids: list[str], own: dict[str, float], share: float) -> tuple[list[str], list[str]]:
    """(the most influential ids carrying `share` of their summed influence, the rest); ids without an
    influence are kept."""
    known = sorted((i for i in ids if i in own), key=lambda i: (-own[i], i))
    total = sum(own[i] for i in known)
    kept, acc = [], 0.0
    for i in known:
        if total > 0 and acc >= share * total:
            break
        kept.append(i)
        acc += own[i]
    keep = set(kept) | {i for i in ids if i not in own}
    return [i for i in ids if i in keep], [i for i in ids if i not in keep]


def _edge_profiles(graph: Graph, ids: list[str]) -> csr_matrix:
    """Rows: each node's signed incoming then outgoing link weights over all graph nodes, L2-normalised."""
    col = {n.node_id: i for i, n in enumerate(graph.nodes)}
    row = {nid: i for i, nid in enumerate(ids)}
    n_all = len(graph.nodes)  # node ids may repeat (circuit-tracer repeats some); columns follow positions
    rows, cols, vals = [], [], []
    for link in graph.links:
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


def similarity(graph: Graph, ids: list[str], signals: NodeSignals, weights: dict[str, float],
               profiles: csr_matrix | None = None) -> np.ndarray:
    """The combined similarity matrix of `ids`: the weighted mean of the signals each pair both has."""
    n = len(ids)
    total = np.zeros((n, n), dtype=np.float32)
    weight = np.zeros((n, n), dtype=np.float32)
    prof = profiles if profiles is not None else _edge_profiles(graph, ids)
    has_edges = np.asarray(prof.getnnz(axis=1) > 0)
    parts = [("edges", (prof @ prof.T).toarray().astype(np.float32), has_edges)]
    for name, vecs in (("label", signals.labels), ("decoder", signals.decoders or {})):
        unit = _unit_rows(vecs, ids)
        if unit is not None:
            parts.append((name, unit[0] @ unit[0].T, unit[1]))
    if signals.windows:
        rows = window_rows(signals.windows, ids)
        parts.append(("examples", (rows @ rows.T).toarray().astype(np.float32), np.asarray(rows.getnnz(axis=1) > 0)))
    if signals.layers:
        layer = np.array([signals.layers.get(i, np.nan) for i in ids], dtype=np.float32)
        near = np.exp(-np.abs(layer[:, None] - layer[None, :]) / LAYER_SCALE)
        parts.append(("layers", np.nan_to_num(near), ~np.isnan(layer)))
    for name, sim, have in parts:
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        mask = np.outer(have, have).astype(np.float32) * w
        total += sim * mask
        weight += mask
    return np.where(weight > 0, total / np.maximum(weight, 1e-9), 0.0)


def _cut(members: list[str], sim: np.ndarray, threshold: float, max_size: int) -> list[list[str]]:
    """Average-linkage clusters of `members` cut at similarity `threshold`; a cluster over max_size is cut again
    at a higher similarity (it may still be over when its members are alike; the caller caps it)."""
    if len(members) < 2:
        return [members]
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    labels = fcluster(linkage(dist[np.triu_indices(len(members), k=1)], method="average"),
                      t=1.0 - threshold, criterion="distance")
    parts: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(labels):
        parts[int(c)].append(i)
    out: list[list[str]] = []
    for part in parts.values():
        if len(part) > max_size and threshold < 0.99:
            out += _cut([members[i] for i in part], sim[np.ix_(part, part)], 1.0 - (1.0 - threshold) * 0.7,
                        max_size)
        else:
            out.append([members[i] for i in part])
    return out


def _linkage(graph: Graph, a: list[str], b: list[str], signals: NodeSignals, opt: SupernodeOptions,
             prof: csr_matrix) -> float:
    """Average linkage of two groups: the mean similarity of their cross pairs (as the cut within a position
    uses; the mean over the union would let a tight group carry an unrelated one)."""
    sim = similarity(graph, a + b, signals, opt.weights, profiles=prof)
    return float(sim[:len(a), len(a):].mean())


def _merge_nearby(graph: Graph, groups: list[list[str]], pos_of: dict[str, int], signals: NodeSignals,
                  opt: SupernodeOptions, profile: Any) -> list[list[str]]:
    """Merge pairs of groups at positions within opt.near whose average linkage reaches the cut threshold
    (best pair first), while the union stays within max_size. Each pair's agreement is computed once."""
    if opt.near <= 0:
        return groups
    live: dict[int, list[str]] = dict(enumerate(groups))
    next_id = len(groups)

    def agreement(a: int, b: int) -> float | None:
        pa, pb = {pos_of[m] for m in live[a]}, {pos_of[m] for m in live[b]}
        if pa == pb or min(abs(x - y) for x in pa for y in pb) > opt.near or len(live[a]) + len(live[b]) > opt.max_size:
            return None
        s = _linkage(graph, live[a], live[b], signals, opt, profile(live[a] + live[b]))
        return s if s >= opt.threshold else None

    pairs: dict[tuple[int, int], float] = {}
    ids = sorted(live)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            s = agreement(a, b)
            if s is not None:
                pairs[(a, b)] = s
    while pairs:
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        merged = live.pop(a) + live.pop(b)
        pairs = {k: v for k, v in pairs.items() if a not in k and b not in k}
        live[next_id] = merged
        for other in sorted(live):
            if other != next_id:
                s = agreement(other, next_id)
                if s is not None:
                    pairs[(other, next_id)] = s
        next_id += 1
    return list(live.values())


def _tell_apart(groups: list[Supernode], graph: Graph | dict[str, Any], pos_of: dict[str, int],
                layers: dict[str, int]) -> None:
    """Groups with the same name get the prompt token they sit at (`"in" @ " Dallas"`), else their position;
    those still alike (one concept at two depths) get their layers (`"in" @ " Dallas" L8-11`), and any still
    alike a number (`#1` the strongest)."""
    tokens = coerce_graph(graph).metadata.prompt_tokens or []
    names = Counter(s.label for s in groups)
    for s in groups:
        if names[s.label] > 1:
            home = Counter(pos_of[m] for m in s.node_ids).most_common(1)[0][0]
            at = repr(str(tokens[home])).replace("'", '"') if 0 <= home < len(tokens) else f"position {home}"
            s.label = f"{s.label} @ {at}"
    names = Counter(s.label for s in groups)
    for s in groups:
        depth = sorted({layers[m] for m in s.node_ids if m in layers})
        if names[s.label] > 1 and depth:
            s.label += f" L{depth[0]}" + (f"-{depth[-1]}" if len(depth) > 1 else "")
    names, seen = Counter(s.label for s in groups), Counter[str]()
    for s in groups:  # still alike (same token, same layers): numbered, strongest first
        if names[s.label] > 1:
            seen[s.label] += 1
            s.label += f" #{seen[s.label]}"


def propose(graph: Graph | dict[str, Any], label_vectors: dict[str, np.ndarray],
            decoder_vectors: dict[str, np.ndarray] | None = None, options: SupernodeOptions | None = None,
            node_ids: list[str] | None = None, windows: dict[str, np.ndarray] | None = None) -> Grouping:
    """Supernodes over the graph's influential feature nodes (or those of `node_ids`), best first, and what was
    left out. `windows`: each node's hashed top-example windows (tracer.example_vectors), when a store has them."""
    opt = options or SupernodeOptions()
    graph = coerce_graph(graph)
    by_id = graph.feature_node_by_id()
    ids = node_ids if node_ids is not None else [n.node_id for n in graph.feature_nodes()]
    ids = list(dict.fromkeys(i for i in ids if i in by_id))
    pos_of = {i: int(by_id[i].ctx_idx or 0) for i in ids}
    left: Counter[str] = Counter()
    own = own_influence(graph)
    off_sink = [i for i in ids if pos_of[i] != SINK_POSITION]
    left["at the sink position 0"] += len(ids) - len(off_sink)
    cand, weak = _influential(off_sink, own, opt.influence)
    left[f"outside the top {opt.influence:.0%} of feature influence"] += len(weak)

    def importance(i: str) -> float:
        return own.get(i, 0.0)

    all_profiles = _edge_profiles(graph, cand)
    row = {nid: k for k, nid in enumerate(cand)}

    def profile(members: list[str]) -> csr_matrix:
        return all_profiles[[row[m] for m in members]]

    clerps = {i: str(by_id[i].clerp or "").strip() for i in cand}
    layers = {i: int(by_id[i].layer) for i in cand if str(by_id[i].layer).lstrip("-").isdigit()}
    signals = NodeSignals(label_vectors, decoder_vectors, windows, layers)
    counts = {"labels": sum(1 for i in cand if i in label_vectors),
              "edges": int((all_profiles.getnnz(axis=1) > 0).sum()) if cand else 0,
              "decoders": sum(1 for i in cand if i in (decoder_vectors or {})),
              "top examples": sum(1 for i in cand if i in (windows or {})),
              "influence": sum(1 for i in cand if i in own)}
    by_pos: dict[int, list[str]] = defaultdict(list)
    for i in cand:
        by_pos[pos_of[i]].append(i)
    groups: list[list[str]] = []
    for pos, members in sorted(by_pos.items()):
        sim = similarity(graph, members, signals, opt.weights, profiles=profile(members))
        groups += _cut(members, sim, opt.threshold, opt.max_size)
    capped = []
    for g in groups:
        if len(g) > opt.max_size:  # alike beyond telling apart: the most influential members
            g = sorted(g, key=lambda m: (-importance(m), m))
            left[f"over the group size cap {opt.max_size}"] += len(g) - opt.max_size
            g = g[:opt.max_size]
        capped.append(g)
    # The most influential groups of each position, at most max_per_position, before merging nearby ones
    # (which bounds the pairs the merge compares).
    per_pos: dict[int, list[list[str]]] = defaultdict(list)
    for g in capped:
        if len(g) >= max(2, opt.min_size):
            per_pos[pos_of[g[0]]].append(g)
    groups = []
    for pos, gs in sorted(per_pos.items()):
        gs.sort(key=lambda g: (-sum(importance(m) for m in g), -len(g), min(g)))
        groups += gs[:opt.max_per_position]
        left[f"over {opt.max_per_position} groups at its position"] += sum(len(g) for g in gs[opt.max_per_position:])
    groups = _merge_nearby(graph, groups, pos_of, signals, opt, profile)
    grouped = {m for g in groups for m in g}
    counted = sum(v for k, v in left.items() if k.startswith("over "))
    left["no similar node nearby"] += sum(1 for i in cand if i not in grouped) - counted
    out = []
    for g in groups:
        g = sorted(g, key=lambda m: (-importance(m), m))
        name, kind = supernode_name([clerps[m] for m in g], [pos_of[m] for m in g])
        out.append(Supernode(name, g, sum(importance(m) for m in g), sorted({pos_of[m] for m in g}), kind))
    out.sort(key=lambda s: (-s.score, -len(s.node_ids), s.node_ids[0]))
    _tell_apart(out, graph, pos_of, layers)
    kept = out[:opt.max_supernodes]
    if len(out) > opt.max_supernodes:
        left[f"over {opt.max_supernodes} supernodes"] += sum(len(s.node_ids) for s in out[opt.max_supernodes:])
    return Grouping(kept, len(ids), {k: v for k, v in left.items() if v}, counts)


def propose_supernodes(graph: Graph | dict[str, Any], label_vectors: dict[str, np.ndarray],
                       decoder_vectors: dict[str, np.ndarray] | None = None,
                       options: SupernodeOptions | None = None, node_ids: list[str] | None = None) -> list[Supernode]:
    """Supernodes over the graph's influential feature nodes (or `node_ids`), best first (propose(...).supernodes)."""
    return propose(graph, label_vectors, decoder_vectors, options, node_ids).supernodes
