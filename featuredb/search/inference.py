"""Inference search (Neuronpedia's search-topk-by-token and search-all): run a text through the registered model.

The model and transcoders are run by a backend another package registers as an entry point (the `ingest`
package's; featuredb never imports ingest); tests and other hosts may pass any object with the same methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.store.reads import model_ids
from featuredb.store.schema import feature_key
from featuredb.store.search_tables import feature_labels

if TYPE_CHECKING:
    import duckdb

    from featuredb.store.feature_store import FeatureStore

BACKENDS_GROUP = "featuredb.inference_backends"  # entry points: classes taking the store


@dataclass
class SourceActivations:
    """One source's feature activations over the text's tokens: per position, (index, value) pairs."""

    source: str
    per_token: list[list[tuple[int, float]]]


@dataclass
class TextActivations:
    """What the backend computed for one text."""

    tokens: list[str]
    sources: list[SourceActivations]
    has_bos: bool = False


@dataclass
class FeatureValues:
    """Chosen features' activations at every token of one text."""

    tokens: list[str]
    values: dict[tuple[str, int], list[float]]
    has_bos: bool = False


class InferenceBackend(Protocol):
    """Runs a registered model and its transcoders over a text."""

    def activations(self, model: str, text: str, sources: list[str] | None, top_k: int) -> TextActivations:
        """The `top_k` strongest features per token and source."""
        ...

    def feature_values(self, model: str, text: str, features: list[tuple[str, int]]) -> FeatureValues:
        """Every token's activation of each (source, index) feature."""
        ...


def load_backend(store: FeatureStore) -> InferenceBackend:
    """The registered backend over this store's models (the ingest package's); a clear error when none is."""
    backends = sorted(entry_points(group=BACKENDS_GROUP), key=lambda ep: ep.name)
    if not backends:
        raise FeatureDBError("inference search needs the ingest package and torch (no inference backend is installed)")
    try:
        backend = backends[0].load()
    except ImportError as e:
        raise FeatureDBError(f"inference search needs the ingest package and torch ({e})") from None
    return backend(store)


@dataclass
class TokenFeature:
    """One feature at one token."""

    source: str
    index: int
    activation: float
    label: str | None
    density: float | None


@dataclass
class TokenResult:
    """Neuronpedia's search-topk-by-token entry: a token and its top features."""

    position: int
    token: str
    top_features: list[TokenFeature] = field(default_factory=list)


@dataclass
class InferenceResult:
    """Per-token top features and, across the text, features ranked by their strongest activation."""

    model: str
    tokens: list[str]
    by_token: list[TokenResult]
    overall: list[TokenFeature]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _labels(con: duckdb.DuckDBPyConnection, model: str,
            keys: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str | None, float | None]]:
    if not keys:
        return {}
    rows = feature_labels(con, [feature_key(model, s, i) for s, i in keys])
    return {(s, int(i)): (label, d) for s, i, label, d in rows}


def inference_search(store: FeatureStore, model: str, text: str, *, sources: list[str] | None = None, top_k: int = 5,
                     ignore_bos: bool = True, density_threshold: float | None = None, limit: int = 20,
                     backend: InferenceBackend | None = None) -> InferenceResult:
    """Run `text` through `model` and its registered transcoders; top features per token and overall."""
    if not text.strip():
        raise FeatureDBError("inference search needs a non-empty text")
    if model not in model_ids(store):
        raise NotFoundError(f"model {model!r} is not registered in {store.path}; ingest it first")
    backend = backend or load_backend(store)
    acts = backend.activations(model, text, sources, top_k * 4 if density_threshold is not None else top_k)
    keys = {(s.source, i) for s in acts.sources for tok in s.per_token for i, _ in tok}
    labels = _labels(store.con, model, keys)
    by_token: list[TokenResult] = []
    best: dict[tuple[str, int], TokenFeature] = {}
    for pos, token in enumerate(acts.tokens):
        if ignore_bos and acts.has_bos and pos == 0:
            continue
        feats = []
        for s in acts.sources:
            for index, value in s.per_token[pos]:
                if value <= 0:
                    continue
                label, density = labels.get((s.source, index), (None, None))
                if density_threshold is not None and density is not None and density > density_threshold:
                    continue
                tf = TokenFeature(s.source, index, float(value), label, density)
                feats.append(tf)
                if (s.source, index) not in best or value > best[(s.source, index)].activation:
                    best[(s.source, index)] = tf
        feats.sort(key=lambda f: -f.activation)
        by_token.append(TokenResult(pos, token, feats[:top_k]))
    overall = sorted(best.values(), key=lambda f: -f.activation)[:limit]
    return InferenceResult(model, acts.tokens, by_token, overall)
