"""The fixed log-spaced bins of the activation histogram that featuredb's ingest writes (`freq_hist_data_bar_*`).

Fixed, so that shards and resumed runs merge by adding counts; defined here because the store's feature packs
leave these bin centres out of every pack and put them back on reading.
"""

from __future__ import annotations

import numpy as np

HIST_LOG10_MIN = -4.0  # 10^-4 .. 10^4, 8 bins per decade
HIST_BINS_PER_DECADE = 8
HIST_BINS = 64


def hist_centres() -> np.ndarray:
    """Activation values at the centres of the bins (float64)."""
    return 10 ** (HIST_LOG10_MIN + (np.arange(HIST_BINS) + 0.5) / HIST_BINS_PER_DECADE)
