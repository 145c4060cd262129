"""The sensitivity index of each model, and the ranking of models by it across paired bootstraps."""

from __future__ import annotations

import numpy as np

from jbtrace.analysis.inference import LEVEL


def index_summary(prof: dict) -> dict:
    lo, hi = np.nanpercentile(prof["index_boot"], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {
        "value": prof["index"],
        "ci_low": float(lo),
        "ci_high": float(hi),
        "null_mean": prof["index_null"],
        "p": prof["index_p"],
    }


def ranking(reps: dict[str, np.ndarray], models: dict, stat: str) -> dict:
    """Order models by the sensitivity index.

    Also how often each pairwise order holds across paired bootstraps.
    """
    names = sorted(reps, key=lambda m: -models[m]["stats"][stat]["index"]["value"])
    mat = np.stack([reps[m] for m in names], axis=1)  # (replicate, model)
    ranks = (-mat).argsort(axis=1).argsort(axis=1)
    return {
        "order": names,
        "index": {m: models[m]["stats"][stat]["index"]["value"] for m in names},
        "pairwise": [
            {
                "higher": names[i],
                "lower": names[j],
                "holds": float((mat[:, i] > mat[:, j]).mean()),
                "ties": float((mat[:, i] == mat[:, j]).mean()),
            }
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ],
        "rank_share": {
            m: [float((ranks[:, k] == r).mean()) for r in range(len(names))]
            for k, m in enumerate(names)
        },
    }
