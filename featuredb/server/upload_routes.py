"""Neuronpedia's routes for adding your own data, over the store: model/new, source-set/new and get,
feature/upload-batch and activation/upload-batch. Writes need the write token; the shapes and checks are
Neuronpedia's (apps/webapp/app/api/.../route.ts), so its Python client's upload calls work unchanged."""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable

import pyarrow as pa
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator

from featuredb.errors import BadInputError, NotFoundError
from featuredb.identity import set_of_source
from featuredb.server.fields import Number, int_in
from featuredb.server.limits import MAX_NAME_CHARS
from featuredb.server.write_access import WRITE_ERRORS, writer_check
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import feature_row
from featuredb.store.server_reads import (model_record, release_record, set_source_records, source_set_record,
                                          stored_indices)

LOCAL_USER = "local"
MODEL_ID = re.compile(r"^[a-z][a-z0-9.-]*[a-z0-9]$|^[a-z]$")  # Neuronpedia's model/new rule
SET_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")  # Neuronpedia's source-set/new rule
PathName = Annotated[str, Path(max_length=MAX_NAME_CHARS)]


def _lower(value: Any) -> Any:
    """Neuronpedia's yup `.lowercase()`: names arrive lowercased."""
    return value.lower() if isinstance(value, str) else value


LowerName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), BeforeValidator(_lower)]
Url = Annotated[str, Field(max_length=2048, pattern=r"^https?://\S+$")]


class NewModelRequest(BaseModel):
    """POST /api/model/new."""

    id: Annotated[str, Field(min_length=1, max_length=32)]
    layers: int_in(1, 127)  # type: ignore[valid-type]
    displayName: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    url: Url | None = None

    @field_validator("id")
    @classmethod
    def _model_id(cls, v: str) -> str:
        if not MODEL_ID.match(v) or "--" in v or ".." in v:
            raise ValueError("Name must contain only lowercase letters, digits, hyphens, and periods, start with a "
                             "lowercase letter, not end with a hyphen or period, and not contain double hyphens")
        return v


class NewSourceSetRequest(BaseModel):
    """POST /api/source-set/new."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    modelId: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    description: Annotated[str, Field(max_length=128)] | None = None
    url: Url | None = None

    @field_validator("name")
    @classmethod
    def _set_name(cls, v: str) -> str:
        if not SET_NAME.match(v) or "--" in v or v == "neurons":
            raise ValueError("Name must contain only lowercase letters, digits, and hyphens, start with a letter or "
                             "digit, not end with a hyphen, and not contain double hyphens")
        return v


class UploadLogit(BaseModel):
    """One of topLogits / bottomLogits."""

    token: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    value: Number


class UploadExplanation(BaseModel):
    """One explanation of an uploaded feature."""

    text: Annotated[str, Field(min_length=1, max_length=512)]
    methodName: Annotated[str, BeforeValidator(_lower), Field(max_length=MAX_NAME_CHARS)] | None = None
    modelName: Annotated[str, BeforeValidator(_lower), Field(max_length=MAX_NAME_CHARS)] | None = None


class UploadActivation(BaseModel):
    """One activating example: tokens and one value per token, and the quantile it was drawn from."""

    tokens: Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]], Field(min_length=1, max_length=1024)]
    values: Annotated[list[Number], Field(min_length=1, max_length=1024)]
    quantileMax: Annotated[float, Field(le=99999999, allow_inf_nan=False)] | None = None
    quantileMin: Annotated[float, Field(le=99999999, allow_inf_nan=False)] | None = None
    quantileFraction: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> "UploadActivation":
        if len(self.tokens) != len(self.values):
            raise ValueError(f"tokens has {len(self.tokens)} items but values has {len(self.values)}")
        return self


class UploadFeature(BaseModel):
    """One feature of POST /api/feature/upload-batch."""

    index: int_in(0, 10_000_000)  # type: ignore[valid-type]
    density: Annotated[float, Field(ge=0, le=1)] | None = None
    topLogits: Annotated[list[UploadLogit], Field(max_length=20)] | None = None
    bottomLogits: Annotated[list[UploadLogit], Field(max_length=20)] | None = None
    explanations: Annotated[list[UploadExplanation], Field(max_length=64)] | None = None
    activations: Annotated[list[UploadActivation], Field(min_length=1, max_length=256)]


class FeatureUploadBatch(BaseModel):
    """POST /api/feature/upload-batch: up to 128 features of one source."""

    modelId: LowerName
    source: LowerName
    features: Annotated[list[UploadFeature], Field(min_length=1, max_length=128)]

    @model_validator(mode="after")
    def _unique(self) -> "FeatureUploadBatch":
        if len({f.index for f in self.features}) != len(self.features):
            raise ValueError("All indexes must be unique.")
        return self


class ActivationUploadBatch(BaseModel):
    """POST /api/activation/upload-batch: more activating examples of one existing feature."""

    modelId: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    source: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    index: Annotated[str, Field(pattern=r"^[0-9]{1,15}$")]
    activations: Annotated[list[UploadActivation], Field(min_length=1, max_length=256)]


def get_source_set(store: FeatureStore, model: str, name: str) -> dict[str, Any]:
    """Neuronpedia's getSourceSet: the source-set row with its sources, release and model."""
    rec = source_set_record(store, model, name)
    if rec is None:
        raise NotFoundError(f"source set {model}/{name} is not in the store")
    rec["urls"] = rec.get("urls") or []
    rec["sources"] = set_source_records(store, model, name)
    rec["releases"] = release_record(store, rec.get("releaseName"))
    rec["model"] = model_record(store, model)
    return rec


def _activation_row(model: str, source: str, index: int, a: UploadActivation) -> dict[str, Any]:
    top = max(range(len(a.values)), key=a.values.__getitem__)
    return {"modelId": model, "layer": source, "index": index, "tokens": a.tokens, "values": a.values,
            "maxValue": a.values[top], "maxValueTokenIndex": top, "minValue": min(a.values),
            "binMin": a.quantileMin, "binMax": a.quantileMax, "binContains": a.quantileFraction,
            "creatorId": LOCAL_USER, "dataSource": f"User {LOCAL_USER}", "dataIndex": LOCAL_USER}


def upload_tables(body: FeatureUploadBatch, existing: set[int]) -> dict[str, pa.Table]:
    """Store tables for an upload batch: neuron rows only for new indexes (Neuronpedia's skipDuplicates), every
    activation and explanation (their ids come from their content, so a repeated upload adds nothing)."""
    feats, acts, exps = [], [], []
    set_name = set_of_source(body.source)
    for f in body.features:
        key = {"modelId": body.modelId, "layer": body.source, "index": f.index}
        rows = [_activation_row(body.modelId, body.source, f.index, a) for a in f.activations]
        if f.index not in existing:
            feats.append({**key, "creatorId": LOCAL_USER, "sourceSetName": set_name,
                          "frac_nonzero": f.density if f.density is not None else -1.0,
                          "maxActApprox": max(0.0, *(r["maxValue"] for r in rows)), "hasVector": False,
                          "pos_str": [t.token for t in f.topLogits or []],
                          "pos_values": [t.value for t in f.topLogits or []],
                          "neg_str": [t.token for t in f.bottomLogits or []],
                          "neg_values": [t.value for t in f.bottomLogits or []]})
        acts.extend(rows)
        exps.extend({**key, "description": e.text, "typeName": e.methodName, "explanationModelName": e.modelName,
                     "authorId": LOCAL_USER} for e in f.explanations or [])
    out = {"activations": pa.Table.from_pylist(acts)}
    if feats:
        out["features"] = pa.Table.from_pylist(feats)
    if exps:
        out["explanations"] = pa.Table.from_pylist(exps)
    return out


def upload_router(view: Callable[[], FeatureStore], write_token: str | None) -> APIRouter:
    """The upload routes; every write needs `x-api-key: write_token`."""
    router = APIRouter(tags=["Uploads"])
    require_writer = writer_check(write_token)

    def known_source(store: FeatureStore, model: str, source: str) -> None:
        if not store.sources(model, source):
            raise NotFoundError(f"source {model}/{source} is not in the store; create its source set first "
                                "(the source-set/new route)")

    @router.post("/api/model/new", summary="New Model", responses=WRITE_ERRORS)
    def model_new(body: NewModelRequest, request: Request) -> dict[str, Any]:
        """Register a model (id and layer count) so source sets and features can be added to it."""
        require_writer(request)
        store = view()
        if model_record(store, body.id) is not None:
            raise BadInputError("Model already exists")
        name = body.displayName or body.id
        store.upsert({"models": pa.Table.from_pylist([{
            "id": body.id, "creatorId": LOCAL_USER, "layers": body.layers, "displayName": name,
            "displayNameShort": name, "website": body.url, "visibility": "UNLISTED", "instruct": False,
            "inferenceEnabled": False, "owner": LOCAL_USER}])})
        return model_record(store, body.id) or {}

    @router.post("/api/source-set/new", summary="New Source Set", responses=WRITE_ERRORS)
    def source_set_new(body: NewSourceSetRequest, request: Request) -> dict[str, Any]:
        """A source set of a model, with one source per layer named {layer}-{name}, as on Neuronpedia."""
        require_writer(request)
        store = view()
        model = model_record(store, body.modelId)
        if model is None:
            raise BadInputError("Model not found")
        if source_set_record(store, body.modelId, body.name) is not None:
            raise BadInputError("Source set name already exists for this model.")
        if not model.get("layers"):
            raise BadInputError(f"model {body.modelId} has no layer count, so its sources cannot be made")
        store.upsert({
            "source_sets": pa.Table.from_pylist([{
                "modelId": body.modelId, "name": body.name, "description": body.description or body.name,
                "urls": [body.url or ""], "visibility": "UNLISTED", "type": "Custom", "creatorName": LOCAL_USER,
                "creatorId": LOCAL_USER, "hasDashboards": True, "allowInferenceSearch": False,
                "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
                "showHeadAttribution": False, "showUmap": False, "graphEnabled": False, "hasGraphs": False}]),
            "sources": pa.Table.from_pylist([{
                "id": f"{layer}-{body.name}", "modelId": body.modelId, "setName": body.name, "hasDashboards": True,
                "inferenceEnabled": False, "visibility": "UNLISTED", "creatorId": LOCAL_USER}
                for layer in range(int(model["layers"]))]),
        })
        return get_source_set(store, body.modelId, body.name)

    @router.get("/api/source-set/{modelId}/{name}", summary="Get Source Set")
    def source_set_get(modelId: PathName, name: PathName) -> dict[str, Any]:
        """A source set with its sources."""
        return get_source_set(view(), modelId, name)

    @router.post("/api/feature/upload-batch", tags=["Features"], summary="Upload Features", responses=WRITE_ERRORS)
    def feature_upload_batch(body: FeatureUploadBatch, request: Request) -> dict[str, Any]:
        """Up to 128 features of one source: density, logits, explanations and activating examples."""
        require_writer(request)
        store = view()
        known_source(store, body.modelId, body.source)
        existing = stored_indices(store, body.modelId, body.source, [f.index for f in body.features])
        store.upsert(upload_tables(body, existing))  # one transaction: the batch arrives whole or not at all
        return {"message": f"{len(body.features) - len(existing)} features created."}

    @router.post("/api/activation/upload-batch", tags=["Activations"], summary="Upload Activations",
                 responses=WRITE_ERRORS)
    def activation_upload_batch(body: ActivationUploadBatch, request: Request) -> dict[str, Any]:
        """More activating examples for a feature already in the store."""
        require_writer(request)
        store = view()
        index = int(body.index)
        if feature_row(store, body.modelId, body.source, index) is None:
            raise NotFoundError(f"feature {body.modelId}/{body.source}/{index} is not in the store")
        rows = [_activation_row(body.modelId, body.source, index, a) for a in body.activations]
        store.upsert({"activations": pa.Table.from_pylist(rows)})
        return {"message": f"{len(rows)} activations created."}

    return router

