"""One tried input or fault and what happened: the row bench/bench_faults.py counts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

# What a case can end in. The first two are good; every other one is a failure the issue counts.
ACCEPTED = "accepted"            # good input taken exactly as given
CLEAR_ERROR = "clear_error"      # refused with a one-line message (CLI: non-zero exit; HTTP: 4xx), nothing written
TRACEBACK = "traceback"          # a Python traceback reached the user
DATA_LOSS = "data_loss"          # rows lost, altered or half-written
SECURITY = "security_failure"    # a write, read or key leak the boundary should have stopped
SERVER_ERROR = "5xx"             # an HTTP 5xx answer (or a dropped connection)
KINDS = (ACCEPTED, CLEAR_ERROR, TRACEBACK, DATA_LOSS, SECURITY, SERVER_ERROR)


@dataclass
class Outcome:
    """One case: the boundary (import, graph, serve, ...), a short name, its result and a detail line."""

    area: str
    case: str
    kind: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True for tracebacks, data loss, security failures and 5xx."""
        return self.kind not in (ACCEPTED, CLEAR_ERROR)


def cli_outcome(area: str, case: str, proc: subprocess.CompletedProcess[str], *, should_fail: bool) -> Outcome:
    """Classify a finished CLI run: a traceback, a clear one-line refusal, or acceptance."""
    text = (proc.stdout or "") + (proc.stderr or "")
    if "Traceback (most recent call last)" in text:
        return Outcome(area, case, TRACEBACK, text.strip().splitlines()[-1][:200])
    if proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        if should_fail and len(err) == 1:
            return Outcome(area, case, CLEAR_ERROR, err[0][:200])
        kind = CLEAR_ERROR if should_fail else DATA_LOSS
        return Outcome(area, case, kind, " | ".join(err)[:200] or f"exit {proc.returncode}")
    if should_fail:
        return Outcome(area, case, DATA_LOSS, "accepted input that should have been refused")
    return Outcome(area, case, ACCEPTED)
