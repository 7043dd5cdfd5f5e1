"""Neuronpedia / circuit-tracer identities: source ids, layers and Cantor-paired feature ids."""

from __future__ import annotations

import math


def cantor_pair(layer: int, index: int) -> int:
    """circuit-tracer's feature id for (layer, index): (L+i)(L+i+1)/2 + i."""
    s = layer + index
    return s * (s + 1) // 2 + index


def cantor_unpair(z: int) -> tuple[int, int]:
    """Inverse of cantor_pair: the (layer, index) behind a circuit-tracer feature id."""
    w = (math.isqrt(8 * z + 1) - 1) // 2
    index = z - w * (w + 1) // 2
    return w - index, index


def source_id(layer: int, source_set: str) -> str:
    """Neuronpedia's source id, e.g. source_id(20, 'gemmascope-transcoder-16k')."""
    return f"{layer}-{source_set}"


def layer_of_source(source: str) -> int:
    """The layer number at the front of a source id such as '20-gemmascope-transcoder-16k'."""
    head = source.split("-", 1)[0]
    if not head.isdigit():
        raise ValueError(f"source id {source!r} does not start with a layer number")
    return int(head)


def set_of_source(source: str) -> str:
    """The source-set name of a source id: '20-gemmascope-transcoder-16k' -> 'gemmascope-transcoder-16k'."""
    parts = source.split("-", 1)
    return parts[1] if len(parts) == 2 else ""


def parse_index(value: object) -> int:
    """A feature index given as int or as Neuronpedia's string form."""
    if isinstance(value, bool):
        raise ValueError(f"feature index {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"feature index {value!r} is not an integer")
