"""Run the featuredb CLI and SIGKILL it at a named point: the Nth call of (or return from) a function.

    python tests/kill_at.py featuredb.store.feature_store:FeatureStore.close 1 call -- import neuronpedia EXPORT --db S

The point is a module and a function's qualified name; `call` kills on entry, `return` just after it returns,
`c_call:NAME` just before that function calls the C function NAME (e.g. DuckDB's `execute` of a COMMIT).
`EVENT+SECONDS` kills that long after the event instead, to land inside long C work such as a checkpoint.
A point that is never reached lets the command finish, and the exit status is then 3, so a test notices a
kill point that no longer exists. Nothing in featuredb knows about this: it is a profile hook in the child.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

NOT_REACHED = 3
TABLES = ("models", "sources", "features", "activations", "explanations")


def store_rows(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table, less the wall-clock stamps (createdAt, updatedAt) two clean runs differ in: what a
    killed and re-run command must end in (tests/test_fault_matrix.py and bench/fault_cases/kills.py compare it)."""
    from featuredb import FeatureStore

    with FeatureStore(db, read_only=True) as store:
        out = {}
        for t in TABLES:
            cols = [r[0] for r in store.con.execute(f'DESCRIBE "{t}"').fetchall()
                    if r[0] not in ("createdAt", "updatedAt")]
            names = ", ".join(f'"{c}"' for c in cols)
            order = ", ".join(f'"{c}"::VARCHAR' for c in cols)
            out[t] = store.con.execute(f'SELECT {names} FROM "{t}" ORDER BY {order}').fetchall()
        return out


def _kill(delay: float) -> None:
    if delay <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


def install(point: str, nth: int, event: str) -> None:
    """Arrange for this process to SIGKILL itself at the nth `event` of `point` (see the module's docstring)."""
    module, qualname = point.split(":", 1)
    event, _, delay = event.partition("+")
    event, _, c_name = event.partition(":")
    if event not in ("call", "return", "c_call") or (event == "c_call") != bool(c_name):
        raise SystemExit(f"kill_at: event must be call, return or c_call:NAME, not {event!r}")
    seen = {"n": 0}

    def hook(frame: FrameType, what: str, arg: Any) -> None:
        if what != event or frame.f_code.co_qualname != qualname or frame.f_globals.get("__name__") != module:
            return
        if c_name and getattr(arg, "__name__", None) != c_name:
            return
        seen["n"] += 1
        if seen["n"] == nth:
            _kill(float(delay or 0))

    sys.setprofile(hook)
    threading.setprofile(hook)


def main(argv: list[str]) -> None:
    """Parse `POINT N EVENT -- CLI ARGS...`, install the hook and run the featuredb CLI."""
    split = argv.index("--")
    point, nth, event = argv[:split]
    from featuredb.cli.root import main as featuredb_main

    install(point, int(nth), event)
    sys.argv = ["featuredb", *argv[split + 1:]]
    try:
        featuredb_main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    sys.setprofile(None)
    sys.exit(NOT_REACHED)


if __name__ == "__main__":
    main(sys.argv[1:])
