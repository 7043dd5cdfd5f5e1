"""Field types of the servers' request bodies: JSON numbers and booleans taken as the OpenAPI schema says, names
and texts of bounded length (the bounds are in limits.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from featuredb.server.limits import MAX_INDEX, MAX_NAME_CHARS

INDEX_TEXT = re.compile(r"[0-9]{1,15}", re.ASCII)


def _json_number(value: Any) -> Any:
    """A JSON number, not true/false or a numeric string (pydantic would take those as 1/0 or parse them)."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"Input should be a number, not {type(value).__name__}")
    return value


def _json_bool(value: Any) -> Any:
    """true or false, not 1, 0 or "yes"."""
    if not isinstance(value, bool):
        raise ValueError("Input should be true or false")
    return value


def _index(value: Any) -> Any:
    """A feature index as a number or as Neuronpedia's string of digits."""
    if isinstance(value, str):
        if not INDEX_TEXT.fullmatch(value):
            raise ValueError("Input should be a non-negative integer or a string of at most 15 digits")
        return int(value)
    return _json_number(value)


def int_in(lo: int, hi: int) -> Any:
    """A JSON integer from lo to hi (an integral float such as 3.0 counts, as in JSON Schema)."""
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(_json_number)]


Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_json_number)]
Bool = Annotated[bool, BeforeValidator(_json_bool)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX), BeforeValidator(_index), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
               {"type": "string", "pattern": f"^{INDEX_TEXT.pattern}$"}]})]
