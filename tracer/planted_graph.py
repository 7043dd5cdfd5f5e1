"""Planted attribution graphs with known groups, noisy edges, labels and decoders, to score supernode proposals."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from featuredb.graph_models import embedding_id, feature_id, logit_id
from featuredb.identity import cantor_pair

CONCEPTS = [
    "Texas", "the state capital", "Austin", "Dallas", "sports teams", "basketball", "football scores",
    "French language", "Paris", "countries in Europe", "numbers and digits", "years and dates", "months",
    "chemical elements", "water and rivers", "music albums", "guitar", "songs and lyrics", "film directors",
    "television series", "programming code", "Python functions", "error messages", "legal contracts",
    "software licenses", "copyright notices", "animals", "dogs", "birds", "weather", "rain and storms",
    "medicine and disease", "hospitals", "family members", "mothers", "kings and queens", "wars and battles",
    "religion", "churches", "cooking and food", "bread", "money and prices", "banks", "opposites", "plural nouns",
]
TEMPLATES = ['"{c}"', "{c}", "mentions of {c}", "says {c}", "{c} (context)", "words about {c}", "{c} tokens"]


@dataclass
class PlantedGraph:
    """The graph, the true group of each feature node (-1 for distractors), and decoder directions."""

    graph: dict[str, Any]
    truth: dict[str, int]
    decoders: dict[str, np.ndarray]


def _node(layer: int, index: int, pos: int, clerp: str, influence: float) -> dict[str, Any]:
    return {"node_id": feature_id(layer, index, pos), "feature": cantor_pair(layer, index), "layer": str(layer),
            "ctx_idx": pos, "feature_type": "cross layer transcoder", "token_prob": 0.0, "is_target_logit": False,
            "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"{layer}_{index}-0", "clerp": clerp,
            "influence": influence, "activation": 1.0}


def plant_graph(*, n_groups: int = 12, group_size: int = 5, n_positions: int = 7, n_distractors: int = 20,
                noise: float = 0.3, n_layers: int = 12, d_model: int = 64, seed: int = 0,
                model: str = "planted-model") -> PlantedGraph:
    """Groups sit at one position each (several groups share a position); `noise` in [0, 1] blurs every signal.

    Labels: a member's label names its group's concept, but with probability `noise` it names another
    concept. Edges: each group feeds 2 later groups with a signed weight; member links jitter by
    `noise`, drop with probability noise/2, and noise-many random links are added per node. Decoders:
    the group's direction plus Gaussian noise of scale 2*noise.
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    concepts = rng.sample(CONCEPTS, n_groups + n_distractors)
    group_pos = [1 + rng.randrange(n_positions - 1) for _ in range(n_groups)]  # position 0 is the sink (<bos>)
    group_dir = nrng.standard_normal((n_groups, d_model))
    nodes: list[dict[str, Any]] = []
    truth: dict[str, int] = {}
    decoders: dict[str, np.ndarray] = {}
    members: list[list[str]] = []
    used: set[tuple[int, int]] = set()

    def fresh(layer: int) -> int:
        while True:
            idx = rng.randrange(4096)
            if (layer, idx) not in used:
                used.add((layer, idx))
                return idx

    for g in range(n_groups):
        ids = []
        for _ in range(group_size):
            layer = rng.randrange(n_layers)
            concept = concepts[g] if rng.random() >= noise else rng.choice(concepts)
            node = _node(layer, fresh(layer), group_pos[g], rng.choice(TEMPLATES).format(c=concept),
                         rng.uniform(0.5, 1.5))  # own influence; made cumulative below
            nodes.append(node)
            truth[node["node_id"]] = g
            decoders[node["node_id"]] = group_dir[g] + 2 * noise * nrng.standard_normal(d_model)
            ids.append(node["node_id"])
        members.append(ids)
    for d in range(n_distractors):
        layer = rng.randrange(n_layers)
        node = _node(layer, fresh(layer), rng.randrange(n_positions), concepts[n_groups + d], rng.uniform(0.02, 0.1))
        nodes.append(node)
        truth[node["node_id"]] = -1 - d
        decoders[node["node_id"]] = nrng.standard_normal(d_model)
    embeds = [{"node_id": embedding_id(100 + p, p), "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding",
               "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
               "jsNodeId": f"E_{100 + p}-{p}", "clerp": "", "influence": None, "activation": None}
              for p in range(n_positions)]
    logit = {"node_id": logit_id(n_layers, 7, n_positions - 1), "feature": 7, "layer": str(n_layers + 1),
             "ctx_idx": n_positions - 1, "feature_type": "logit", "token_prob": 0.5, "is_target_logit": True,
             "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"L_7-{n_positions - 1}", "clerp": 'Output " x"',
             "influence": None, "activation": None}
    links: list[dict[str, Any]] = []

    def link(s: str, t: str, w: float) -> None:
        links.append({"source": s, "target": t, "weight": round(float(w), 5)})

    for g in range(n_groups):  # group-level wiring: embeddings -> groups -> later groups -> logit
        targets = rng.sample(range(n_groups), 2)
        signs = [rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) for _ in targets]
        emb = embeds[group_pos[g]]["node_id"]
        for m in members[g]:
            if rng.random() >= noise / 2:
                link(emb, m, rng.uniform(0.5, 1.5) * (1 + noise * nrng.standard_normal()))
            for t, w in zip(targets, signs):
                if t == g:
                    continue
                for m2 in members[t]:
                    if rng.random() >= noise / 2:
                        link(m, m2, w * (1 + noise * nrng.standard_normal()))
            if g % 3 == 0 and rng.random() >= noise / 2:
                link(m, logit["node_id"], rng.uniform(0.2, 1.0))
    feature_ids = [n["node_id"] for n in nodes]
    all_ids = feature_ids + [e["node_id"] for e in embeds] + [logit["node_id"]]
    for f in feature_ids:  # random links
        for _ in range(int(round(noise * 4))):
            other = rng.choice(all_ids)
            if other != f:
                link(f, other, nrng.standard_normal()) if rng.random() < 0.5 else link(other, f, nrng.standard_normal())
    total, acc = sum(n["influence"] for n in nodes), 0.0
    for n in sorted(nodes, key=lambda n: -n["influence"]):  # circuit-tracer's cumulative influence: lower = more
        acc += n["influence"]
        n["influence"] = acc / total
    rng.shuffle(nodes)
    graph = {
        "metadata": {"slug": f"planted-{seed}", "scan": model, "prompt_tokens": ["<bos>", *(f"t{p}" for p in range(1, n_positions))],
                     "prompt": " ".join(f"t{p}" for p in range(1, n_positions)), "schema_version": 1,
                     "transcoder_list": [], "feature_details": {"neuronpedia_source_set": "planted"}},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": embeds + nodes + [logit],
        "links": links,
    }
    return PlantedGraph(graph, truth, decoders)


def predicted_groups(truth: dict[str, int], supernodes: list[list[str]]) -> tuple[list[int], list[int]]:
    """(true, predicted) group ids over every feature node; nodes in no supernode are singletons."""
    pred: dict[str, int] = {}
    for k, sn in enumerate(supernodes):
        for nid in sn[1:]:
            pred[nid] = k
    ids = sorted(truth)
    next_id = len(supernodes)
    out = []
    for nid in ids:
        if nid in pred:
            out.append(pred[nid])
        else:
            out.append(next_id)
            next_id += 1
    return [truth[i] for i in ids], out
