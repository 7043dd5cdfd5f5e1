"""The store: every module here reads or writes the DuckDB tables; SQL against them lives nowhere else.

- `feature_store`: the connection, the write path and GET feature (`FeatureStore`);
- `schema`: Neuronpedia's tables and featuredb's migrations;
- `reads`: the typed read layer every other package goes through (feature rows, labels, settings);
- `label_query`: the one label rule (featuredb.labels.label_rule) as a query over explanations;
- `score_tables`: explanation scores (Neuronpedia's ExplanationScore) and explanations.scoreV2;
- `label_tables`: what labelling, explaining and scoring read and write (featuredb.labels);
- `export_tables`: what the export formats and the Neuronpedia sync read (featuredb.formats, featuredb.neuronpedia);
- `feature_packs`, `feature_docs`, `feature_docs_table`: the compact per-feature documents behind GET;
- `graph_store`, `graph_identity`, `graph_usage`: saved attribution graphs and what they use;
- `search_indexes`: the derived search tables (BM25 postings, token and logit lookups, embeddings with HNSW);
- `search_tables`: the queries search runs over them;
- `server_reads`: what the server and the CLI read and check of the store (and `featuredb query`'s user SQL).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FeatureStore", "MissingKeyError"]


def __getattr__(name: str) -> Any:
    """`from featuredb.store import FeatureStore` without importing the store with the package."""
    if name in __all__:
        from featuredb.store import feature_store
        return getattr(feature_store, name)
    raise AttributeError(f"module 'featuredb.store' has no attribute {name!r}")
