"""A share with its confidence interval: the one rate helper of every stage.

The interval method is named in every result. Detection rates use Clopper–Pearson (exact)
intervals, the guard's and the attack success rates Wilson score intervals; both come from
``statsmodels.stats.proportion.proportion_confint``. With n = 0 the rate and its interval
are ``None``.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
METHODS = {"clopper-pearson": "beta", "wilson": "wilson"}  # our name -> statsmodels' name


def interval(k: int, n: int, method: str, level: float = LEVEL) -> tuple[float | None, ...]:
    """The ``level`` interval for k successes in n trials by ``method`` ((None, None) for n = 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}: choose from {', '.join(METHODS)}")
    if n == 0:
        return None, None
    alpha = round(1 - level, 12)  # 1 - 0.95 is 0.050000000000000044 in floating point
    low, high = proportion_confint(k, n, alpha=alpha, method=METHODS[method])
    return float(low), float(high)


def rate(flags, method: str, level: float = LEVEL) -> dict:
    """Share of true ``flags``: k, n, rate, its interval and the interval's method."""
    flags = np.asarray(flags, dtype=bool)
    k, n = int(flags.sum()), len(flags)
    low, high = interval(k, n, method, level)
    return {
        "k": k,
        "n": n,
        "rate": k / n if n else None,
        "ci_low": low,
        "ci_high": high,
        "method": method,
    }


def cluster_bootstrap(statistic, groups, seed: int = 0, resamples: int = 200):
    """Percentile bootstrap interval (``LEVEL``) of ``statistic(rows)``, resampling whole groups
    (near-duplicate clusters, say) with replacement: (low, high) arrays, NaN where a resample
    leaves the statistic undefined; None with fewer than two groups."""
    from scipy.stats import bootstrap

    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    if len(members) < 2:
        return None
    result = bootstrap(
        (np.arange(len(members)),),
        lambda picked: statistic(np.concatenate([members[int(g)] for g in picked])),
        vectorized=False,
        n_resamples=resamples,
        confidence_level=LEVEL,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high
