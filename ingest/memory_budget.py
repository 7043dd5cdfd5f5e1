"""How much memory an ingest may use, and how its layers are split into passes over the corpus to stay under it.

The ingest's memory is, in turn:
- fixed: the process with the model loaded (measured, not estimated);
- the pass: the running state of the layers in this pass (`LayerState.bytes_per_feature` each feature) and their
  transcoders' weights (the other layers' weights are not in memory), plus the temporaries of one batch's update;
- the write: the same state, shrinking layer by layer, plus one block of records and of logits;
- the commit: DuckDB, reading the spilled records, under a `memory_limit` of its own.
Layers are packed into as few passes as fit; each extra pass re-reads the corpus and re-runs the model up to the
pass's last layer, so a budget costs (passes - 1) model forwards, not a larger state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from featuredb.errors import FeatureDBError
from ingest.feature_state import MERGE_ROWS, LayerState

GB = 1024**3
DEFAULT_SHARE = 0.5  # of the machine's memory, when --memory-gb is not given
RECORD_BLOCK = 4096  # features turned into rows (and spilled) at a time
RECORD_BYTES_PER_FEATURE = 110_000  # Arrow rows of one feature's 45 examples x 128 tokens, at most (measured ~36 KB)
LOGIT_BUFFERS = 3  # logits, bins and counts of one chunk of logit_stats
HEADROOM = 0.1  # of the budget, left for the allocator's slack (409,620 features peaked 4% over 8 GB without it)


def machine_memory_bytes() -> int:
    """Physical memory of this machine."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_memory_gb() -> float:
    """The budget when none is given: half of the machine."""
    return round(machine_memory_bytes() * DEFAULT_SHARE / GB, 1)


def current_rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass(frozen=True)
class MemoryPlan:
    """The passes an ingest makes (layers per pass) and DuckDB's share, under a budget in bytes."""

    budget: int
    fixed: int
    transient: int
    duckdb_limit: int
    groups: list[list[int]]
    state_bytes: dict[int, int]

    @property
    def passes(self) -> int:
        """Passes over the corpus."""
        return len(self.groups)

    def describe(self) -> str:
        """One line for the log: budget, state and passes."""
        state = sum(self.state_bytes.values())
        spans = ", ".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in self.groups)
        return (f"memory budget {self.budget / GB:.1f} GB: state and transcoders {state / GB:.2f} GB, model "
                f"{self.fixed / GB:.2f} GB; {self.passes} pass(es) over the corpus (layers {spans})")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (bytes)."""
        return {"memory_budget": self.budget, "fixed": self.fixed, "transient": self.transient,
                "duckdb_limit": self.duckdb_limit, "passes": self.passes, "groups": self.groups,
                "state": sum(self.state_bytes.values())}


def transient_bytes(widths: dict[int, int], *, batch: int, ctx_len: int, k: int, reservoir: int, vocab: int,
                    d_model: int) -> int:
    """The most a batch update or a record block adds on top of the state (whichever is larger)."""
    widest = max(widths.values())
    acts = batch * ctx_len * widest * 4 * 4  # encode's pre-activation and activation, the update's copies
    merge = MERGE_ROWS * (3 * max(k, reservoir) + batch) * ctx_len * 4 * 2
    captured = len(widths) * batch * ctx_len * d_model * 4
    update = acts + merge + captured
    block = min(widest, RECORD_BLOCK)
    write = block * RECORD_BYTES_PER_FEATURE + min(block, 1024) * vocab * 4 * LOGIT_BUFFERS
    return max(update, write)


def plan_memory(budget_gb: float, widths: dict[int, int], *, fixed: int, transient: int, k: int, reservoir: int,
                ctx_len: int, weights: dict[int, int] | None = None) -> MemoryPlan:
    """Pack consecutive layers into passes whose state (and transcoder `weights`, bytes by layer) fits the budget;
    a clear error when one layer cannot fit."""
    budget = int(budget_gb * GB)
    per_feature = LayerState.bytes_per_feature(k, reservoir, ctx_len)
    state = {layer: width * per_feature + (weights or {}).get(layer, 0) for layer, width in widths.items()}
    room = int(budget * (1 - HEADROOM)) - fixed - transient
    if room <= 0 or any(b > room for b in state.values()):
        need = (fixed + transient + max(state.values())) / (1 - HEADROOM)
        raise FeatureDBError(
            f"--memory-gb {budget_gb:g}: too small; the model takes {fixed / GB:.2f} GB and the widest layer's "
            f"state and transcoder {max(state.values()) / GB:.2f} GB, so at least {need / GB:.1f} GB is needed "
            f"(or lower --top-examples / --ctx-len, or pass fewer --layers)")
    groups: list[list[int]] = []
    used = room
    for layer in sorted(state):
        if used + state[layer] > room:
            groups.append([])
            used = 0
        groups[-1].append(layer)
        used += state[layer]
    duckdb_limit = max(256 * 1024**2, int((budget - fixed) * 0.5))
    return MemoryPlan(budget, fixed, transient, duckdb_limit, groups, state)
