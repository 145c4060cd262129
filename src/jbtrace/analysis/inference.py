"""Two-sample inference used by every comparison: Welch's t, Hedges' g, permutation p, BH.

Moments in, statistics out; nothing here knows about stores, models or prompts.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy import stats as sps

LEVEL = 0.95


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q); NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m == 0:
        return q
    values = p[finite]
    order = np.argsort(values, kind="stable")
    scaled = values[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    q[finite] = out
    return q


def hedges_j(df: np.ndarray) -> np.ndarray:
    """Exact small-sample correction of Cohen's d, J(df) = Γ(df/2) / (√(df/2) Γ((df−1)/2))."""
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(
            df > 1,
            np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2),
            np.nan,
        )


def welch(n_a, mean_a, var_a, n_b, mean_b, var_b, level: float = LEVEL) -> dict:
    """Welch's t-test of B − A from moments (arrays broadcast).

    Returns diff, se, df, t, p, the CI bounds and Hedges' g.
    """
    n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ua, ub = var_a / n_a, var_b / n_b
        se2 = ua + ub
        se = np.sqrt(se2)
        df = se2**2 / (ua**2 / (n_a - 1) + ub**2 / (n_b - 1))
        diff = mean_b - mean_a
        t = diff / se
        p = 2 * sps.t.sf(np.abs(t), df)
        half = sps.t.ppf(0.5 + level / 2, df) * se
        pooled = np.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
        g = hedges_j(n_a + n_b - 2) * diff / pooled
    return {
        "diff": diff,
        "se": se,
        "df": df,
        "t": t,
        "p": p,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "g": g,
    }


def two_groups(
    values: np.ndarray, w_a: np.ndarray, w_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted B − A difference, Hedges' g and Welch's t per column, for many weightings at once.

    values (prompt, layer); w_a, w_b (replicate, prompt) integer weights (indicators,
    permuted labels, bootstrap counts). Returns diff, g and t, each (replicate, layer).
    """
    v = values - values.mean(axis=0)  # variance is shift-invariant; centring avoids cancellation
    v2 = v**2

    def moments(w):
        n = w.sum(axis=1, keepdims=True).astype(float)
        mean = (w @ v) / n
        var = ((w @ v2) - n * mean**2) / (n - 1)
        return n, mean, np.clip(var, 0, None)

    n_a, mean_a, var_a = moments(w_a)
    n_b, mean_b, var_b = moments(w_b)
    diff = mean_b - mean_a
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
        g = hedges_j(n_a + n_b - 2) * diff / pooled
        t = diff / np.sqrt(var_a / n_a + var_b / n_b)
    return diff, g, t


def permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Two-sided permutation p-value, (1 + #{|null| ≥ |obs|}) / (1 + n); null is (replicate, ...).

    NaN where the observed statistic is undefined (e.g. Welch's t of values constant in both
    groups).
    """
    observed = np.asarray(observed, dtype=float)
    tol = 1e-12 * np.maximum(np.abs(observed), 1.0)
    with np.errstate(invalid="ignore"):
        p = (1 + (np.abs(null) >= np.abs(observed) - tol).sum(axis=0)) / (1 + null.shape[0])
    return np.where(np.isfinite(observed), p, np.nan)


def welch_permutation_p(
    values: np.ndarray, is_b: np.ndarray, perm_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per column of values (prompt, layer): B − A and the permutation p of Welch's t.

    The labels are permuted as in perm_b.

    Studentized, so the test keeps its level when the groups differ in size and spread
    (the raw difference of means does not).
    """
    w_a, w_b = indicators(is_b)
    diff, _, t = (x[0] for x in two_groups(values, w_a, w_b))
    return diff, permutation_p(t, two_groups(values, 1 - perm_b, perm_b)[2])


def permuted_labels(is_b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, prompt) float indicators of B, each row a random permutation of is_b."""
    return rng.permuted(np.tile(is_b.astype(float), (n, 1)), axis=1)


def indicators(is_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The A and B indicator weights of one labelling, each (1, prompt)."""
    return (~is_b)[None].astype(float), is_b[None].astype(float)
