"""Per cell (model, stat, layer, position): tests from the stored moments, and what follows.

Welch's t, Hedges' g and a CI of B − A per cell with Benjamini–Hochberg over the tested cells of
a model and statistic (``cell_tests``); a summary of one model's cells; the per-position profile.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats as sps

from jbtrace.analysis.inference import LEVEL, bh, welch
from jbtrace.errors import UserError

# a cell whose spread is below this (relative) is numerically constant, not tested
CONSTANT_RTOL = 1e-6


def cell_tests(ds: xr.Dataset, q: float = 0.05, min_count: int = 2) -> xr.Dataset:
    """Welch, Hedges' g, CI, BH per cell; dims (model, stat, layer, position).

    A cell is tested when both scenarios have ``min_count`` (at least 2) values and the cell
    is not numerically constant in both; ``status`` says why a cell was not tested:
    0 tested, 1 no data, 2 one scenario only, 3 below min_count, 4 constant.
    """
    if ds.sizes.get("scenario", 0) < 2:
        raise UserError("this run has one scenario: a comparison needs two")
    a, b = ds.scenario.values[:2]
    A, B = ds.sel(scenario=a), ds.sel(scenario=b)
    n_a, n_b = A["count"].values, B["count"].values
    res = welch(n_a, A["mean"].values, A["var"].values, n_b, B["mean"].values, B["var"].values)
    min_count = max(int(min_count), 2)
    enough = (n_a >= min_count) & (n_b >= min_count)
    scale = np.fmax(np.fmax(np.abs(A["mean"].values), np.abs(B["mean"].values)), 1.0)
    spread = np.sqrt(np.fmax(A["var"].values, B["var"].values))
    constant = enough & (spread <= CONSTANT_RTOL * scale)
    tested = enough & ~constant & np.isfinite(res["p"])
    status = np.select(
        [tested, (n_a == 0) & (n_b == 0), (n_a == 0) | (n_b == 0), ~enough, constant],
        [0, 1, 2, 3, 4],
        default=4,
    )
    diff = np.where(enough, res["diff"], np.nan)
    p = np.where(tested, res["p"], np.nan)
    qv = np.full(p.shape, np.nan)
    for m in range(p.shape[0]):
        for s in range(p.shape[1]):
            qv[m, s] = bh(p[m, s].ravel()).reshape(p[m, s].shape)
    dims = ("model", "stat", "layer", "position")
    data = {
        "diff": diff,
        "g": np.where(tested, res["g"], np.nan),
        "ci_low": np.where(tested, res["ci_low"], np.where(constant, diff, np.nan)),
        "ci_high": np.where(tested, res["ci_high"], np.where(constant, diff, np.nan)),
        "p": p,
        "q": qv,
        "significant": tested & (qv < q),
        "se": np.where(enough, np.where(constant, 0.0, res["se"]), np.nan),
        "df": np.where(tested, res["df"], np.nan),
        "status": status.astype(np.int8),
    }
    coords = {k: ds[k] for k in dims}
    return xr.Dataset({k: (dims, v) for k, v in data.items()}, coords=coords)


def cell_summary(c: xr.Dataset) -> dict:
    status = c["status"].values
    tested = status == 0
    sig = c["significant"].values
    diff = c["diff"].values
    n = int(tested.sum())
    return {
        "tested": n,
        "one_scenario_only": int((status == 2).sum()),
        "below_min_count": int((status == 3).sum()),
        "constant": int((status == 4).sum()),
        "significant": int(sig.sum()),
        "significant_share": float(sig.sum() / n) if n else None,
        "significant_positive": int((sig & (diff > 0)).sum()),
        "significant_negative": int((sig & (diff < 0)).sum()),
        "mean_diff": float(diff[tested].mean()) if n else None,
        "mean_abs_g": float(np.abs(c["g"].values[tested]).mean()) if n else None,
        "min_q": float(np.nanmin(c["q"].values)) if n else None,
    }


def position_profile(cells: xr.Dataset) -> xr.Dataset:
    """Per position: mean over layers of the cell differences, with a conservative CI.

    The cells of one position share prompts, so their errors are correlated in unknown ways;
    sd(mean of X_l) ≤ mean of sd(X_l) for any correlation, so the mean of the per-cell
    standard errors (and of the per-cell t half-widths) bounds the error of the average.
    """
    have = np.isfinite(cells["diff"])
    diff = cells["diff"].where(have).mean("layer")
    se = cells["se"].where(have).mean("layer")
    tcrit = xr.apply_ufunc(sps.t.ppf, 0.5 + LEVEL / 2, cells["df"])
    half = (tcrit * cells["se"]).where(cells["status"] == 0, 0.0).where(have).mean("layer")
    df = cells["df"].min("layer")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = xr.apply_ufunc(lambda d, s, f: 2 * sps.t.sf(np.abs(d / s), f), diff, se, df)
    p = p.where(se > 0)
    return xr.Dataset(
        {
            "diff": diff,
            "se": se,
            "ci_low": diff - half,
            "ci_high": diff + half,
            "p": p,
            "n_layers": have.sum("layer"),
        }
    )
