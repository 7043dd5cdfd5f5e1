"""Steer a supernode: scale its member features' activations and compare the model's top predictions.

The classic check ("inhibit Texas and watch the answer change"): with circuit-tracer's ReplacementModel,
each member feature at its (layer, position) is set to `scale` times its activation on the prompt (0
zeroes it, -2 inverts and doubles it, 2 doubles it), and the top predictions before and after are returned.
"""

from __future__ import annotations

from typing import Any

from featuredb.errors import BadInputError
from featuredb.graph_models import Graph, coerce_graph
from tracer.supernode_evidence import feature_coordinates, next_token_probs, target_logit, top_predictions


def find_supernode(graph: Graph | dict[str, Any], label: str) -> tuple[str, list[str]]:
    """(full label, member node ids) of the qParams supernode named `label` (exact, else case-insensitive, else
    a unique prefix)."""
    groups = [[str(x) for x in s] for s in coerce_graph(graph).qParams.supernodes or [] if s]
    for match in (lambda name: name == label, lambda name: name.lower() == label.lower(),
                  lambda name: name.lower().startswith(label.lower())):
        found = [g for g in groups if match(g[0])]
        if len(found) > 1:
            raise BadInputError(f"--supernode {label!r}: {len(found)} supernodes match "
                                f"({', '.join(repr(g[0]) for g in found[:5])}); give the whole label")
        if found:
            return found[0][0], found[0][1:]
    names = ", ".join(repr(g[0]) for g in groups[:10]) or "none (run trace label first)"
    raise BadInputError(f"--supernode {label!r}: the graph has no such supernode; it has: {names}")


def intervene(model: Any, graph: Graph | dict[str, Any], node_ids: list[str], scale: float,
              prompt: str | None = None) -> dict[str, Any]:
    """Top predictions before and after setting each member to scale x its activation on the prompt."""
    text = prompt if prompt is not None else str(coerce_graph(graph).metadata.prompt or "")
    logits, acts = model.get_activations(text)
    members = [feature_coordinates(n) for n in node_ids]
    n_pos = acts.shape[1]
    late = [n for n, (_, _, p) in zip(node_ids, members) if p >= n_pos]
    if late:
        raise BadInputError(f"--prompt: {len(late)} member(s) sit past its {n_pos} tokens (e.g. {late[0]}); "
                            "use a prompt at least as long as the graph's")
    values = [float(acts[layer, pos, f]) for layer, f, pos in members]
    interventions = [(layer, pos, f, scale * v) for (layer, f, pos), v in zip(members, values)]
    after, _ = model.feature_intervention(text, interventions, return_activations=False)
    before_p, after_p = next_token_probs(logits), next_token_probs(after)
    target, token = target_logit(graph)
    return {"prompt": text, "scale": scale, "members": len(members),
            "active_members": sum(v > 0 for v in values), "target": token,
            "p_target_before": round(float(before_p[target]), 5), "p_target_after": round(float(after_p[target]), 5),
            "before": top_predictions(model, before_p), "after": top_predictions(model, after_p)}
