"""The one range grammar of every command: '3,5', '2-6' or a mix ('0-3,10'), inclusive, order kept, no repeats."""

from __future__ import annotations

import re

from featuredb.errors import FeatureDBError

MAX_SPAN = 10_000_000  # the most numbers one A-B range may name


def parse_int_ranges(spec: str, option: str) -> list[int]:
    """'1,2,5-9' -> [1, 2, 5, 6, 7, 8, 9]; a bad part is a one-line error naming `option` and the part."""
    out: dict[int, None] = {}
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise FeatureDBError(f"{option} {spec!r}: {part!r} is not a number or a range A-B; "
                                 "expected e.g. 3,5 or 2-6 or 0-3,10")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise FeatureDBError(f"{option} {spec!r}: the range is empty")
        if hi - lo > MAX_SPAN:
            raise FeatureDBError(f"{option} {spec!r}: the range {part} is too large")
        out.update(dict.fromkeys(range(lo, hi + 1)))
    return list(out)
