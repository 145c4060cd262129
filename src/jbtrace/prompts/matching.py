"""Length matching shared by compare and detect: coarsened exact matching on log token length.

The pooled log lengths are cut into ``n_bins`` quantile bins; in each bin a seeded random
sample of min(n_A, n_B) prompts of each group is kept, so both groups end with the same
count in every bin. ``PROCEDURE`` is the sentence both stages record in their outputs.
"""

from __future__ import annotations

import numpy as np

BINS = 10
PROCEDURE = (
    f"coarsened exact matching on log token length: {BINS} quantile bins of the pooled lengths, "
    "a seeded sample of min(n_A, n_B) prompts of each group per bin"
)


def match_lengths(
    tokens: np.ndarray, is_b: np.ndarray, rng: np.random.Generator | int, n_bins: int = BINS
) -> np.ndarray:
    """Sorted indices (into ``tokens``) of the matched subsample; ``is_b`` marks group two."""
    rng = np.random.default_rng(rng)
    is_b = np.asarray(is_b).astype(bool)
    logs = np.log(np.asarray(tokens, dtype=float))
    edges = np.unique(np.quantile(logs, np.linspace(0, 1, n_bins + 1))[1:-1])
    bins = np.searchsorted(edges, logs, side="right")
    kept = []
    for k in np.unique(bins):
        ia, ib = np.flatnonzero((bins == k) & ~is_b), np.flatnonzero((bins == k) & is_b)
        n = min(ia.size, ib.size)
        if n:
            kept += [rng.choice(ia, n, replace=False), rng.choice(ib, n, replace=False)]
    return np.sort(np.concatenate(kept)) if kept else np.array([], dtype=int)
