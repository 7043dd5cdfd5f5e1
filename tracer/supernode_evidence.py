"""Causal evidence for proposed supernodes: zero each one in the model and compare with random feature sets.

With circuit-tracer's ReplacementModel over the graph's own model and transcoders (the environment the graph
was attributed in), each supernode's member features are set to 0 at their (layer, position) with
`feature_intervention`, and the change in the target logit's probability (Δp) and in the top-5
predictions is recorded. The same is done for `n_random` random sets of active features matched member by
member on layer and position. A supernode is beyond random when |Δp| exceeds the random sets' mean |Δp| by
at least `sds` standard deviations. Saved beside the graph as GRAPH.evidence.json.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featuredb.errors import BadInputError
from featuredb.graph_models import Graph, Node, coerce_graph

N_RANDOM = 8
SDS = 2.0
TOP_K = 5


@dataclass
class SupernodeEvidence:
    """One supernode's ablation: its Δp and top-5 against random matched sets."""

    label: str
    node_ids: list[str]
    delta_p: float  # p(target) with the supernode zeroed - p(target) as is
    top5_after: list[list[Any]]  # [[token, p], ...]
    random_mean: float  # mean |Δp| of the random sets
    random_sd: float
    random_n: int
    beyond_random: bool

    @property
    def margin_sds(self) -> float:
        """How many random standard deviations |Δp| stands above the random mean."""
        sd = self.random_sd if self.random_sd > 0 else 1e-9
        return (abs(self.delta_p) - self.random_mean) / sd


@dataclass
class EvidenceReport:
    """The evidence for every proposal of one graph."""

    prompt: str
    target: str  # the target logit's token
    p_target: float
    top5_before: list[list[Any]]
    supernodes: list[SupernodeEvidence] = field(default_factory=list)
    n_random: int = N_RANDOM
    sds: float = SDS
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as GRAPH.evidence.json holds it."""
        out = asdict(self)
        for s, d in zip(self.supernodes, out["supernodes"]):
            d["margin_sds"] = round(s.margin_sds, 2) if np.isfinite(s.margin_sds) else None
        return out


def feature_coordinates(node_id: str) -> tuple[int, int, int]:
    """(layer, feature index, position) of a circuit-tracer feature node id "L_F_P"."""
    found = Node.parse_feature_id(node_id)
    if found is None:
        raise BadInputError(f"node {node_id!r}: not a circuit-tracer feature node id (layer_feature_position)")
    return found


def target_logit(graph: Graph | dict[str, Any]) -> tuple[int, str]:
    """(vocabulary index, token) of the graph's target logit: is_target_logit, else the most probable logit."""
    logits = [n for n in coerce_graph(graph).nodes if n.feature_type == "logit"]
    if not logits:
        raise BadInputError("graph: no logit node to measure the evidence on")
    best = next((n for n in logits if n.is_target_logit), None) or \
        max(logits, key=lambda n: float(n.token_prob or 0.0))
    clerp = str(best.clerp or "")
    token = clerp.split('"')[1] if clerp.count('"') >= 2 else str(best.feature)
    return int(best.feature), token


def next_token_probs(logits: Any) -> Any:
    """Softmax of the last position's logits."""
    import torch

    last = logits[0, -1] if logits.dim() == 3 else logits[-1]
    return torch.softmax(last.float(), dim=-1)


def top_predictions(model: Any, probs: Any) -> list[list[Any]]:
    """[[token, p], ...] of the TOP_K most probable next tokens."""
    vals, idx = probs.topk(TOP_K)
    return [[model.tokenizer.decode([int(i)]), round(float(v), 4)] for v, i in zip(vals, idx)]


def _random_sets(members: list[tuple[int, int, int]], active: Any, n: int,
                 rng: np.random.Generator) -> list[list[tuple[int, int, int]]]:
    """n sets of as many distinct active features as `members`, matched by layer and position: each
    (layer, position) contributes as many features as the members there, drawn without replacement from its
    other active features; where too few are active there, the rest come from the nearest layers at that
    position (a set of the same size, never one feature counted twice)."""
    taken = set(members)
    n_layers = active.shape[0]
    pools: dict[tuple[int, int], np.ndarray] = {}

    def pool(layer: int, pos: int) -> np.ndarray:
        if (layer, pos) not in pools:
            idx = np.flatnonzero(active[layer, pos] > 0)
            pools[(layer, pos)] = np.array([i for i in idx if (layer, int(i), pos) not in taken], dtype=np.int64)
        return pools[(layer, pos)]

    need = Counter((layer, pos) for layer, _, pos in members)
    out = []
    for _ in range(n):
        chosen: list[tuple[int, int, int]] = []
        for (layer, pos), count in sorted(need.items()):
            used = set(chosen)
            for d in range(n_layers):
                for near in sorted({layer - d, layer + d}):
                    if count and 0 <= near < n_layers:
                        free = [int(i) for i in pool(near, pos) if (near, int(i), pos) not in used]
                        pick = rng.choice(free, size=min(count, len(free)), replace=False) if free else []
                        chosen += [(near, int(i), pos) for i in pick]
                        used.update(chosen)
                        count -= len(pick)
                if not count:
                    break
        if chosen:
            out.append(chosen)
    return out


def supernode_evidence(model: Any, graph: Graph | dict[str, Any], supernodes: list[Any], *, n_random: int = N_RANDOM,
                       sds: float = SDS, seed: int = 0) -> EvidenceReport:
    """Zero each supernode (objects with .label and .node_ids) in `model` (circuit-tracer's ReplacementModel)
    and in n_random matched random sets; the report says which are beyond random."""
    t0 = time.perf_counter()
    prompt = str(coerce_graph(graph).metadata.prompt or "")
    target, token = target_logit(graph)
    logits, acts = model.get_activations(prompt)
    active = acts.detach().float().cpu().numpy() if hasattr(acts, "detach") else np.asarray(acts)
    n_pos = active.shape[1]
    base = next_token_probs(logits)
    p0 = float(base[target])
    report = EvidenceReport(prompt, token, round(p0, 5), top_predictions(model, base), n_random=n_random, sds=sds)
    rng = np.random.default_rng(seed)

    def delta(features: list[tuple[int, int, int]]) -> tuple[float, Any]:
        interventions = [(layer, pos, feature, 0.0) for layer, feature, pos in features]
        out, _ = model.feature_intervention(prompt, interventions, return_activations=False)
        probs = next_token_probs(out)
        return float(probs[target]) - p0, probs

    for s in supernodes:
        members = [feature_coordinates(n) for n in s.node_ids]
        if any(p >= n_pos for _, _, p in members):
            raise BadInputError(f"supernode {s.label!r}: a member's position is past the prompt's {n_pos} tokens")
        d, probs = delta(members)
        sets = _random_sets(members, active, n_random, rng)
        half = (len(sets) + 1) // 2
        rand = [abs(delta(r)[0]) for r in sets[:half]]
        # |Δp| at or below every one of the first half can never end beyond mean + sds·sd (sds >= 1): the
        # other half, however small, leaves mean + sd at or above that minimum. The rest are not run.
        if not (sds >= 1 and rand and abs(d) <= min(rand)):
            rand += [abs(delta(r)[0]) for r in sets[half:]]
        mean = statistics.fmean(rand) if rand else 0.0
        sd = statistics.stdev(rand) if len(rand) > 1 else 0.0
        beyond = bool(rand) and abs(d) > mean + sds * sd and abs(d) > 1e-4
        report.supernodes.append(SupernodeEvidence(s.label, list(s.node_ids), round(d, 5), top_predictions(model, probs),
                                                   round(mean, 5), round(sd, 5), len(rand), beyond))
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
