"""Pydantic models of Neuronpedia's API shapes, built from the schema's column tables."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, create_model

from featuredb.store.schema import ACTIVATIONS, EXPLANATIONS, FEATURES, Table

_SCALARS: dict[str, Any] = {
    "VARCHAR": str,
    "BIGINT": int,
    "DOUBLE": float,
    "BOOLEAN": bool,
    "JSON": Any,
}


def _python_type(duck_type: str) -> Any:
    if duck_type.endswith("[]"):
        return list[_SCALARS[duck_type[:-2]]]
    return _SCALARS[duck_type]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _record_model(name: str, table: Table, doc: str, **extra: Any) -> type[BaseModel]:
    """A pydantic model with one optional field per column (and `extra` fields); `index` is a string as on
    Neuronpedia."""
    fields: dict[str, Any] = {}
    for col, ty in table.columns.items():
        py = str if col == "index" else _python_type(ty)
        fields[col] = (Optional[py], None)
    model = create_model(name, __base__=_Record, __doc__=doc, **fields, **extra)
    return model


# `source` repeats `layer` on each activation and explanation: Neuronpedia's own Python client reads it there.
Activation = _record_model("Activation", ACTIVATIONS, "One activating example (Neuronpedia Activation).",
                           source=(Optional[str], None))
Explanation = _record_model("Explanation", EXPLANATIONS, "One explanation of a feature (Neuronpedia Explanation).",
                            source=(Optional[str], None), scores=(list[Any], []),
                            triggeredByUser=(Optional[dict[str, Any]], None))
_NeuronBase = _record_model("Neuron", FEATURES, "A feature's own columns (Neuronpedia Neuron).")


class Feature(_NeuronBase):  # type: ignore[misc, valid-type]
    """The shape of Neuronpedia's GET /api/feature/{modelId}/{layer}/{index}: the neuron's columns, the relations
    Neuronpedia includes (model, source, sourceSet rows; lists, comments, creator) and its examples and labels."""

    model: Optional[dict[str, Any]] = None
    source: Optional[dict[str, Any]] = None
    sourceSet: Optional[dict[str, Any]] = None
    creator: Optional[dict[str, Any]] = None
    lists: list[Any] = []
    comments: list[Any] = []
    activations: list[Activation] = []  # type: ignore[valid-type]
    explanations: list[Explanation] = []  # type: ignore[valid-type]
