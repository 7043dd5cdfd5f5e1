"""The demo's `--endpoint` step: explain a graph's features with an LLM endpoint and score the explanations, so
the graph's labels (the one label rule: best score first) can come from them."""

from __future__ import annotations

from typing import Any, Callable

from featuredb.labels.chat_endpoint import ChatEndpoint
from featuredb.labels.embedding_score import score_embedding
from featuredb.labels.explain import explain_features
from featuredb.graph_models import Graph
from featuredb.neuronpedia.sync import graph_features
from featuredb.store.feature_store import FeatureStore

EXPLAIN_TYPE = "np_max-act-logits"


def graph_explainer(db: str, model: str, endpoint_url: str, explainer_model: str, key_env: str, *,
                    quiet: bool = False) -> Callable[[Graph], dict[str, Any]]:
    """A function that explains (and embedding-scores) the store features a graph uses; returns what it did."""

    def explain(graph: Graph) -> dict[str, Any]:
        keys = [f"{m}/{s}/{i}" for m, s, i in graph_features(graph, model, None)]
        endpoint = ChatEndpoint(endpoint_url, explainer_model, key_env=key_env)
        with FeatureStore(db) as store:
            report = explain_features(store, endpoint, model=model, keys=keys, type_name=EXPLAIN_TYPE,
                                      progress=False if quiet else None)
            scored = score_embedding(store, model=model, type_name=EXPLAIN_TYPE, progress=False if quiet else None)
        return {"features": len(keys), "explained": report.explained, "skipped": report.skipped,
                "failed": report.failed, "first_error": report.first_error, "mean_score": scored.mean_score}

    return explain
