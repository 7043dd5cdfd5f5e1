"""Which store model and source set a graph's feature nodes belong to, whatever the graph's scan naming.

A graph names its features by `metadata.scan` (circuit-tracer writes the transcoders' scan, e.g.
`smollm2-135m-instruct/featuredb-skip-2k`, or a hub path such as `mntss/transcoder-Llama-3.2-1B`),
`metadata.feature_details.neuronpedia_source_set` and `metadata.transcoder_list`. Each of these is matched
against what the store holds. A path-like scan that matches nothing (a transcoder repo) means the store's only
model, and a graph naming no set of the store's means the model's only set; a plain scan is Neuronpedia's model id
and is never silently swapped for another model.
"""

from __future__ import annotations

from typing import Any

from featuredb.formats.graph_json import graph_metadata, graph_model, graph_source_set
from featuredb.graph_models import Graph


def _scan_parts(graph: Graph | dict[str, Any]) -> list[str]:
    scan = str(graph_metadata(graph).get("scan") or "").split("@")[0]
    parts = [p for p in scan.replace("//", "/").split("/") if p]
    return [scan, *reversed(parts)] if scan else []


def _models(con: Any) -> list[str]:
    return [r[0] for r in con.execute('SELECT DISTINCT "modelId" FROM features ORDER BY 1').fetchall()]


def source_sets(con: Any, model: str) -> list[str]:
    """The source-set names the store holds for a model."""
    return [r[0] for r in con.execute('SELECT DISTINCT "setName" FROM sources WHERE "modelId" = ? '
                                      'AND "setName" IS NOT NULL ORDER BY 1', [model]).fetchall()]


def resolve_model(con: Any, graph: Graph | dict[str, Any], override: str | None = None) -> str:
    """--model; else the part of metadata.scan that is a model in the store; else the model of the one source set
    a scan part names; else, for a path-like scan (a transcoder repo, not a model id), the store's only model;
    else the scan's last part (which the caller reports as missing: a plain scan is Neuronpedia's model id)."""
    if override:
        return override
    models = _models(con)
    parts = _scan_parts(graph)
    for candidate in parts:
        if candidate in models:
            return candidate
    owners = {r[0] for r in con.execute('SELECT DISTINCT "modelId" FROM sources WHERE "setName" IN '
                                        f'({", ".join("?" * len(parts))})', parts).fetchall()} if parts else set()
    if len(owners) == 1:
        return owners.pop()
    scan = str(graph_metadata(graph).get("scan") or "")
    return models[0] if len(models) == 1 and "/" in scan else graph_model(graph)


def resolve_source_set(con: Any, graph: Graph | dict[str, Any], model: str, override: str | None = None) -> str | None:
    """--source-set; else feature_details.neuronpedia_source_set; else a transcoder_list entry or scan part that
    is a source set of the model in the store; else the model's only source set; else None."""
    if override:
        return override
    details = graph_metadata(graph).get("feature_details") or {}
    if details.get("neuronpedia_source_set"):
        return str(details["neuronpedia_source_set"])
    sets = source_sets(con, model)
    for candidate in [graph_source_set(graph), *_scan_parts(graph)]:
        if candidate in sets:
            return candidate
    return sets[0] if len(sets) == 1 else None
