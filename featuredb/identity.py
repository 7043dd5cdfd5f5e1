"""Neuronpedia / circuit-tracer identities: source ids, layers and Cantor-paired feature ids."""

from __future__ import annotations

import math
import re


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


INDEX_MAX = 2**63 - 1  # a feature index is stored as BIGINT
_DIGITS = re.compile(r"[0-9]+")


def parse_index(value: object) -> int:
    """A feature index: a non-negative integer, or Neuronpedia's string of decimal digits, at most 2**63 - 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        index = int(digits) if len(digits) <= 19 else INDEX_MAX + 1
    else:
        raise ValueError(f"feature index {_shown(value)} is not a non-negative integer")
    if not 0 <= index <= INDEX_MAX:
        raise ValueError(f"feature index {_shown(value)} is out of range (0 to 2**63 - 1)")
    return index


def _shown(value: object) -> str:
    if isinstance(value, int) and abs(value) > 10**40:
        return "(a very long integer)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
