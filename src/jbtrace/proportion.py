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
