"""Position trends: does B − A change with token position? Tested at the prompt level."""

from __future__ import annotations

import numpy as np

from jbtrace.analysis.inference import bh, permuted_labels, welch, welch_permutation_p


def position_trends(
    slopes: np.ndarray, is_b: np.ndarray, n_permutations: int, seed: int, q: float
) -> list[dict]:
    """Does B − A change with position? Per layer band.

    The bands are thirds of the layers where this statistic has slopes.

    Tested at the prompt level: each prompt's least-squares slope over its positions
    (``prompt_slope``), averaged over the band's layers, compared between the scenarios by
    Welch's t with a permutation p over prompt labels (BH over the bands). Prompts of
    different lengths and offsets stay exchangeable under the null, which a test over the
    positions of the cell means is not (late positions average only long prompts).
    slopes is (prompt, layer) over length-matched prompts: a short prompt's slope is steeper
    (its first tokens weigh more), so unmatched lengths would make a length effect look like a
    trend.
    """
    layers = np.flatnonzero(np.isfinite(slopes).any(axis=0))
    thirds = [x for x in np.array_split(layers, 3) if x.size]
    names = (
        ["early", "middle", "late"]
        if len(thirds) == 3
        else [f"band {i}" for i in range(len(thirds))]
    )
    out = []
    for k, (name, band) in enumerate(zip(names, thirds, strict=True)):
        y = slopes[:, band].mean(axis=1)
        ok = np.isfinite(y)  # a prompt with one position (or none finite in a layer) has no slope
        y, b = y[ok], is_b[ok]
        row = {
            "band": name,
            "layers": [int(band[0]), int(band[-1])],
            "n_prompts": {"a": int((~b).sum()), "b": int(b.sum())},
            "slope_a": None,
            "slope_b": None,
            "diff": None,
            "ci_low": None,
            "ci_high": None,
            "p": None,
            "q": None,
            "trend": False,
        }
        if b.sum() >= 2 and (~b).sum() >= 2:
            _, p = welch_permutation_p(
                y[:, None],
                b,
                permuted_labels(b, n_permutations, np.random.default_rng([seed, 2, k])),
            )
            ya, yb = y[~b], y[b]
            w = welch(ya.size, ya.mean(), ya.var(ddof=1), yb.size, yb.mean(), yb.var(ddof=1))
            row.update(
                slope_a=float(ya.mean()),
                slope_b=float(yb.mean()),
                diff=float(w["diff"]),
                ci_low=float(w["ci_low"]),
                ci_high=float(w["ci_high"]),
                p=None if np.isnan(p[0]) else float(p[0]),
            )
        out.append(row)
    adjusted = bh(np.array([r["p"] if r["p"] is not None else np.nan for r in out]))
    for r, qq in zip(out, adjusted, strict=True):
        if r["p"] is not None:
            r["q"] = float(qq)
            r["trend"] = bool(qq < q)
    return out
