"""Neuronpedia's inference routes over the store's registered model: search-topk-by-token, activation/new,
activation/source and search-all, each for one text or (as Neuronpedia allows) a list of texts."""

from __future__ import annotations

import threading
from typing import Annotated, Any, Callable

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.search.inference import InferenceBackend, load_backend
from featuredb.server.fields import Bool, Index, Name, Number, int_in
from featuredb.server.limits import MAX_INDEX, MAX_SORT_INDEXES, MAX_SOURCES, MAX_TEXT_CHARS, MAX_TEXTS
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import source_ids
from featuredb.store.schema import feature_key
from featuredb.store.server_reads import explanations_by_feature, densities_by_key

TOPK_DEFAULT_DENSITY = 0.01  # Neuronpedia's DEFAULT_DENSITY_THRESHOLD for search-topk-by-token
SEARCH_ALL_RESULTS = 50
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


def _density(value: float | None, default: float) -> float:
    """Neuronpedia's rule: absent means `default`; then `densityThreshold || -1`, so 0 means no filter."""
    value = (default if value is None else value) or -1
    if value != -1 and not 0 < value < 1:
        raise FeatureDBError("densityThreshold must be between 0 and 1.")
    return value


class TopKByTokenRequest(BaseModel):
    """POST /api/search-topk-by-token."""

    modelId: str = Field(max_length=50)
    source: str = Field(max_length=50)
    text: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)]
    numResults: int_in(1, 20) = 10  # type: ignore[valid-type]
    ignoreBos: Bool = True
    densityThreshold: Number | None = TOPK_DEFAULT_DENSITY


class FeatureRef(BaseModel):
    """The feature of POST /api/activation/new (`source` or `layer` name the source)."""

    modelId: Name
    source: Name | None = None
    layer: Name | None = None
    index: Index

    @field_validator("index")
    @classmethod
    def _as_text(cls, v: str | int) -> str:
        return str(v)


class ActivationNewRequest(BaseModel):
    """POST /api/activation/new: a feature (as `feature` or `neuron`) and a custom text or list of texts."""

    feature: FeatureRef | None = None
    neuron: FeatureRef | None = None
    customText: Text | Annotated[list[Text], Field(max_length=MAX_TEXTS)]
    ignoreBos: Bool = False


class ActivationSourceRequest(BaseModel):
    """POST /api/activation/source: every active feature of one source on a text (or on each of up to 4)."""

    modelId: Name
    source: Name
    customText: Text | Annotated[list[Text], Field(min_length=1, max_length=4)]


class SearchAllRequest(BaseModel):
    """POST /api/search-all: the top features of a source set over a whole text (or over each text of a list)."""

    modelId: Name
    sourceSet: Name
    text: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)]
    selectedLayers: list[Name] = Field(default_factory=list, max_length=MAX_SOURCES)
    sortIndexes: list[int_in(0, MAX_TEXT_CHARS)] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=MAX_SORT_INDEXES)
    ignoreBos: Bool = True
    densityThreshold: Number | None = -1
    numResults: int_in(1, 100) = SEARCH_ALL_RESULTS  # type: ignore[valid-type]


def _explanation_neurons(store: FeatureStore, model: str, keys: set[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    """Explanation-only neurons (as Neuronpedia's topk searcher returns them) for (source, index) pairs."""
    if not keys:
        return {}
    by_key = {feature_key(model, s, i): (s, i) for s, i in keys}
    densities = densities_by_key(store, list(by_key))
    explanations = explanations_by_feature(store, list(by_key))
    out: dict[tuple[str, int], dict] = {}
    for fkey, (source, index) in by_key.items():
        if fkey not in densities and fkey not in explanations:
            continue
        out[(source, index)] = {
            "modelId": model, "layer": source, "index": str(index), "frac_nonzero": densities.get(fkey),
            "explanations": [{"description": e["description"], "typeName": e["typeName"], "scoreV1": e["scoreV1"],
                              "scoreV2": e["scoreV2"]} for e in explanations.get(fkey, [])]}
    return out


class LazyBackend:
    """The inference backend (the ingest package's model runner), loaded on first use and shared by the routes
    and the search page, so the model is loaded once."""

    def __init__(self, store: FeatureStore, backend: InferenceBackend | None = None) -> None:
        self.store, self.backend = store, backend
        self._lock = threading.Lock()

    def __call__(self) -> InferenceBackend:
        """The backend, loading it on the first call."""
        with self._lock:
            if self.backend is None:
                self.backend = load_backend(self.store)
            return self.backend


def inference_router(view: Callable[[], FeatureStore], runner: LazyBackend) -> APIRouter:
    """The inference routes, answered by `runner`'s backend."""
    router = APIRouter(tags=["Search via Inference"])

    def topk_by_token(body: TopKByTokenRequest, text: str, threshold: float, with_neurons: bool) -> dict[str, Any]:
        if not text.strip():
            raise FeatureDBError("text must not be empty.")
        acts = runner().activations(body.modelId, text, [body.source], body.numResults)
        per_token = acts.sources[0].per_token
        neurons = _explanation_neurons(view(), body.modelId, {(body.source, i) for t in per_token for i, _ in t})
        results = []
        for pos, token in enumerate(acts.tokens):
            special = acts.has_bos and pos == 0
            if body.ignoreBos and special:
                continue
            feats = []
            for index, value in per_token[pos]:
                neuron = neurons.get((body.source, index))
                if threshold != -1 and not (neuron and neuron["frac_nonzero"] and neuron["frac_nonzero"] <= threshold):
                    continue
                feats.append({"activationValue": value, "featureIndex": index,
                              **({"feature": neuron} if with_neurons else {})})
            results.append({"position": pos, "token": token, "isSpecial": special, "topFeatures": feats})
        return {"source": body.source, "results": results}

    @router.post("/api/search-topk-by-token", summary="Top Features for Text by Token")
    def search_topk_by_token(body: TopKByTokenRequest) -> dict[str, Any]:
        """The top features of one source at every token of the text; for a list of texts, one result each
        (without the features' explanations, as on Neuronpedia)."""
        threshold = _density(body.densityThreshold, TOPK_DEFAULT_DENSITY)
        if isinstance(body.text, list):
            return {"results": [topk_by_token(body, t, threshold, with_neurons=False) for t in body.text]}
        return topk_by_token(body, body.text, threshold, with_neurons=True)

    @router.post("/api/activation/new", tags=["Activations"], summary="Feature Activation for Text")
    def activation_new(body: ActivationNewRequest) -> Any:
        """One feature's activation at every token of a custom text (or of each text in a list)."""
        ref = body.neuron or body.feature
        source = ref and (ref.layer or ref.source)
        if ref is None or not source or not ref.index:
            raise FeatureDBError("Invalid feature.")
        try:
            index = int(ref.index)
        except ValueError:
            raise FeatureDBError(f"feature.index: {ref.index!r} is not an integer") from None
        if not 0 <= index <= MAX_INDEX:
            raise FeatureDBError(f"feature.index: {index} is out of range")
        texts = [body.customText] if isinstance(body.customText, str) else body.customText
        if not texts or not all(t.strip() for t in texts):
            raise FeatureDBError("Missing custom text.")
        out = []
        for text in texts:
            fv = runner().feature_values(ref.modelId, text, [(source, index)])
            tokens, values = fv.tokens, fv.values[(source, index)]
            if body.ignoreBos and fv.has_bos:
                tokens, values = tokens[1:], values[1:]
            top = max(range(len(values)), key=values.__getitem__) if values else 0
            out.append({"modelId": ref.modelId, "layer": source, "index": str(index), "tokens": tokens,
                        "values": values, "maxValue": values[top] if values else 0.0, "maxValueTokenIndex": top,
                        "minValue": min(values) if values else 0.0})
        return out[0] if isinstance(body.customText, str) else out

    @router.post("/api/activation/source", tags=["Activations"], summary="All Active Features of a Source")
    def activation_source(body: ActivationSourceRequest) -> dict[str, Any]:
        """For each text: its tokens and, per active feature of the source, [token position, value] pairs
        (the first token left out, as Neuronpedia's inference server does)."""
        texts = [body.customText] if isinstance(body.customText, str) else body.customText
        if not all(t.strip() for t in texts):
            raise FeatureDBError("customText must not be empty.")
        results = []
        for text in texts:
            acts = runner().activations(body.modelId, text, [body.source], top_k=MAX_INDEX)
            active: dict[str, list[list[float]]] = {}
            for pos, feats in enumerate(acts.sources[0].per_token):
                if pos == 0:
                    continue
                for index, value in feats:
                    active.setdefault(str(index), []).append([pos, round(value, 3)])
            results.append({"tokens": acts.tokens, "activeFeatures": active})
        return {"results": results}

    def search_all_one(body: SearchAllRequest, text: str, threshold: float, in_set: list[str],
                       with_neurons: bool) -> dict[str, Any]:
        if not text.strip():
            raise FeatureDBError("Missing search text.")
        store_view = view()
        sources = sorted(body.selectedLayers) or in_set
        backend = runner()
        acts = backend.activations(body.modelId, text, sources, body.numResults)
        candidates = sorted({(s.source, i) for s in acts.sources for tok in s.per_token for i, _ in tok})
        fv = backend.feature_values(body.modelId, text, candidates) if candidates else None
        sort_indexes = sorted(body.sortIndexes)
        ranked = []
        for key in candidates:
            values = fv.values[key] if fv else []
            top = max(range(len(values)), key=values.__getitem__)
            score = sum(values[i] for i in sort_indexes if 0 <= i < len(values)) if sort_indexes else values[top]
            if score <= 0 or (body.ignoreBos and acts.has_bos and top == 0):
                continue
            ranked.append((score, key, values, top))
        ranked.sort(key=lambda r: (-r[0], r[1]))
        results = []
        for score, (source, index), values, top in ranked:
            neuron = None
            if with_neurons or threshold != -1:
                try:
                    neuron = store_view.get_feature(body.modelId, source, index, max_acts=1).model_dump(mode="json")
                except NotFoundError:
                    neuron = None
            if threshold != -1 and neuron is not None and (neuron.get("frac_nonzero") or 0) > threshold:
                continue
            row = {"modelId": body.modelId, "layer": source, "index": str(index), "values": values,
                   "maxValue": values[top], "maxValueIndex": top}
            if with_neurons:
                row["neuron"] = neuron
            results.append(row)
            if len(results) == body.numResults:
                break
        out: dict[str, Any] = {"tokens": acts.tokens, "result": results, "sortIndexes": sort_indexes}
        if with_neurons:
            out["counts"] = []
        return out

    @router.post("/api/search-all", summary="Top Features for Entire Text")
    def search_all(body: SearchAllRequest) -> dict[str, Any]:
        """The source set's features that fire most on the text (or on the tokens at sortIndexes); for a list of
        texts, one result each under `results` (without neurons, as on Neuronpedia)."""
        threshold = _density(body.densityThreshold, -1)
        in_set = source_ids(view(), body.modelId, body.sourceSet)
        if not in_set:
            raise NotFoundError(f"source set {body.modelId}/{body.sourceSet} is not in the store")
        unknown = sorted(set(body.selectedLayers) - set(in_set))
        if unknown:
            raise FeatureDBError(f"selectedLayers: {', '.join(unknown)} not in source set {body.sourceSet}")
        if isinstance(body.text, list):
            return {"results": [search_all_one(body, t, threshold, in_set, with_neurons=False) for t in body.text]}
        return search_all_one(body, body.text, threshold, in_set, with_neurons=True)

    return router
