"""Which differences between the two scenarios are real: tests, FDR, effect sizes, profiles, ranking, length.

Per cell (model, stat, layer, position) the stored moments give Welch's t, Hedges' g and
a 95% CI of B − A, with Benjamini–Hochberg over the tested cells of a model and statistic.
The per-prompt pooled values ``prompt_value`` (prompt × layer) give the layer profile
(permutation tests of Welch's t, bootstrap CIs), the sensitivity index and its ranking
across models, and the length-matched comparison; the per-prompt slopes over position
``prompt_slope`` give the position trends, tested at the prompt level. The per-position
profile comes from the cell moments (see the README, section Compare, for every definition).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from scipy import special
from scipy import stats as sps

from jbtrace.errors import UserError
from jbtrace.prompts.matching import PROCEDURE as MATCHING
from jbtrace.prompts.matching import match_lengths

log = logging.getLogger(__name__)

CELL_VARS = ("diff", "g", "ci_low", "ci_high", "p", "q", "significant")
LEVEL = 0.95
CONSTANT_RTOL = (
    1e-6  # a cell whose spread is below this (relative) is numerically constant, not tested
)
MAX_EXCLUDED_GAP = (
    0.05  # refuse when non-finite values exclude shares of prompts this far apart in A and B
)


@dataclass
class CompareResult:
    """Everything ``compare`` found; ``cells`` has dims (model, stat, layer, position)."""

    cells: xr.Dataset  # CELL_VARS, plus se, df and status (why a cell was not tested)
    layer_profile: xr.Dataset  # (model, stat, layer): diff, ci_low, ci_high, g, p, q, significant
    position_profile: xr.Dataset  # (model, stat, position): diff, ci_low, ci_high, p
    models: dict  # model -> {label, random_init, n_layers, lengths, stats: {stat: summary}}
    ranking: dict  # stat -> ranking across models
    params: dict
    scenarios: tuple[str, str]
    observations: dict = field(default_factory=dict)  # model -> list of sentences

    def to_json(self) -> dict:
        from jbtrace.analysis.observe import to_json

        return to_json(self)


# ---------------------------------------------------------------- small, independent pieces


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
    """Welch's t-test of B − A from moments (arrays broadcast): diff, se, df, t, p, CI and Hedges' g."""
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

    NaN where the observed statistic is undefined (e.g. Welch's t of values constant in both groups).
    """
    observed = np.asarray(observed, dtype=float)
    tol = 1e-12 * np.maximum(np.abs(observed), 1.0)
    with np.errstate(invalid="ignore"):
        p = (1 + (np.abs(null) >= np.abs(observed) - tol).sum(axis=0)) / (1 + null.shape[0])
    return np.where(np.isfinite(observed), p, np.nan)


def welch_permutation_p(
    values: np.ndarray, is_b: np.ndarray, perm_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per column of values (prompt, layer): B − A and the permutation p of Welch's t (labels permuted as in perm_b).

    Studentized, so the test keeps its level when the groups differ in size and spread
    (the raw difference of means does not).
    """
    w_a, w_b = _indicators(is_b)
    diff, _, t = (x[0] for x in two_groups(values, w_a, w_b))
    return diff, permutation_p(t, two_groups(values, 1 - perm_b, perm_b)[2])


def permuted_labels(is_b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, prompt) float indicators of B, each row a random permutation of is_b."""
    return rng.permuted(np.tile(is_b.astype(float), (n, 1)), axis=1)


# ---------------------------------------------------------------- per cell


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


# ---------------------------------------------------------------- per prompt (layer profile, index, length)


@dataclass
class _Prompts:
    """One model's per-prompt pooled values for one statistic, with the prompts and layers that are usable."""

    values: np.ndarray  # (prompt, layer) over the kept prompts and layers
    is_b: np.ndarray  # (prompt,) bool
    keep: np.ndarray  # indices into the store's prompt axis
    layers: np.ndarray  # layer indices kept
    excluded: dict  # {"a", "b"}: prompts left out for a value that is not finite
    total: dict  # {"a", "b"}: prompts in the scenario

    @property
    def usable(self) -> bool:
        return self.is_b.sum() >= 2 and (~self.is_b).sum() >= 2 and self.layers.size > 0


def _prompts(ds: xr.Dataset, model: str, stat: str, a: str, b: str) -> _Prompts:
    """Prompts of A and B whose values are finite at every layer that has data (a prompt counts whole or not at all)."""
    scen = ds["prompt_scenario"].values
    in_ab = np.isin(scen, [a, b])
    values = ds["prompt_value"].sel(model=model, stat=stat).transpose("prompt", "layer").values
    layers = np.flatnonzero(np.isfinite(values[in_ab]).any(axis=0))
    ok = in_ab & np.isfinite(values[:, layers]).all(axis=1)
    keep = np.flatnonzero(ok)
    total = {"a": int((scen == a).sum()), "b": int((scen == b).sum())}
    excluded = {"a": int((scen[~ok] == a).sum()), "b": int((scen[~ok] == b).sum())}
    return _Prompts(values[np.ix_(keep, layers)], scen[keep] == b, keep, layers, excluded, total)


def _check_exclusion(model: str, stat: str, pv: _Prompts, a: str, b: str, limit: float) -> None:
    """Refuse a comparison whose prompts were removed unequally (e.g. by fp16 overflow in one scenario)."""
    if not pv.total["a"] or not pv.total["b"]:
        return
    share = {k: pv.excluded[k] / pv.total[k] for k in ("a", "b")}
    gap = abs(share["a"] - share["b"])
    if gap > limit:
        raise UserError(
            f"{model}, {stat}: non-finite values exclude {pv.excluded['a']} of {pv.total['a']} {a} and "
            f"{pv.excluded['b']} of {pv.total['b']} {b} prompts ({gap:.0%} apart, limit {limit:.0%}); the "
            f"comparison would be biased: extract again in float32 or bfloat16, or allow it with --max-excluded-gap"
        )


def _nonfinite(ds: xr.Dataset, model: str, stat: str, a: str, b: str) -> dict:
    """Values that were not finite (token values; prompt-bin values with relative alignment), per scenario."""
    nf = ds["nonfinite"].sel(model=model, stat=stat).sum(["layer", "position"])
    return {"a": int(nf.sel(scenario=a)), "b": int(nf.sel(scenario=b))}


def _indicators(is_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (~is_b)[None].astype(float), is_b[None].astype(float)


def _layer_profile(
    pv: _Prompts, perm_b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, q: float
) -> dict:
    """Per-layer B − A of prompt means: Welch-t permutation p, BH over layers, bootstrap CI, Hedges' g."""
    w_a, w_b = _indicators(pv.is_b)
    diff, g, t = (x[0] for x in two_groups(pv.values, w_a, w_b))
    _, null_g, null_t = two_groups(pv.values, 1 - perm_b, perm_b)
    boot, boot_g, _ = two_groups(pv.values, boot_a, boot_b)
    p = permutation_p(t, null_t)
    lo, hi = np.nanpercentile(boot, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    index = np.abs(g).mean()
    null_index = np.abs(null_g).mean(axis=1)
    return {
        "diff": diff,
        "g": g,
        "p": p,
        "q": bh(p),
        "ci_low": lo,
        "ci_high": hi,
        "boot": boot,
        "index": float(index),
        "index_boot": np.abs(boot_g).mean(axis=1),
        "index_null": float(null_index.mean()),
        "index_p": float(permutation_p(np.array(index), null_index)),
    }


def _bands(layers: np.ndarray, prof: dict, cells: xr.Dataset, q: float) -> list[dict]:
    """Maximal runs of consecutive layers whose profile is significant with one sign."""
    sig = prof["q"] < q
    sign = np.sign(prof["diff"])
    out, i = [], 0
    while i < len(layers):
        if not sig[i]:
            i += 1
            continue
        j = i
        while (
            j + 1 < len(layers)
            and sig[j + 1]
            and sign[j + 1] == sign[i]
            and layers[j + 1] == layers[j] + 1
        ):
            j += 1
        span = slice(i, j + 1)
        band_boot = prof["boot"][:, span].mean(axis=1)
        lo, hi = np.nanpercentile(band_boot, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        sel = cells.sel(layer=slice(int(layers[i]), int(layers[j])))
        tested = int((sel["status"] == 0).sum())
        out.append(
            {
                "layers": [int(layers[i]), int(layers[j])],
                "sign": int(sign[i]),
                "mean_diff": float(prof["diff"][span].mean()),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "max_q": float(prof["q"][span].max()),
                "cells_tested": tested,
                "cells_significant_share": float(sel["significant"].sum()) / tested
                if tested
                else None,
            }
        )
        i = j + 1
    return out


def length_quantiles(tokens: np.ndarray) -> dict:
    qs = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
    return {
        "n": int(tokens.size),
        "mean": float(tokens.mean()) if tokens.size else None,
        "quantiles": {str(k): float(np.quantile(tokens, k)) for k in qs} if tokens.size else {},
    }


def _length_matched(
    pv: _Prompts, tokens: np.ndarray, prof: dict, n_permutations: int, seed: int, q: float
) -> dict:
    """The layer profile recomputed on length-matched prompts, and how much of it survives."""
    rng = np.random.default_rng(seed)
    kept = match_lengths(tokens, pv.is_b, rng)
    is_b = pv.is_b[kept]
    out = {
        "procedure": MATCHING,
        "prompts_kept": {"a": int((~is_b).sum()), "b": int(is_b.sum())},
        "lengths": {
            "a": length_quantiles(tokens[kept][~is_b]),
            "b": length_quantiles(tokens[kept][is_b]),
        },
    }
    if is_b.sum() < 2 or (~is_b).sum() < 2:
        return {**out, "layers": [], "survival": None, "note": "too little length overlap to match"}
    diff, p = welch_permutation_p(pv.values[kept], is_b, permuted_labels(is_b, n_permutations, rng))
    qv = bh(p)
    base = prof["diff"]
    denom = float(base @ base)
    return {
        **out,
        "survival": float(diff @ base / denom) if denom > 0 else None,
        "layers_significant": int((qv < q).sum()),
        "layers": [
            {
                "layer": int(layer),
                "diff": float(d),
                "unmatched_diff": float(u),
                "ratio": float(d / u) if u else None,
                "p": float(pp),
                "q": float(qq),
                "significant": bool(qq < q),
            }
            for layer, d, u, pp, qq in zip(pv.layers, diff, base, p, qv)
        ],
    }


# ---------------------------------------------------------------- per position (from cell moments)


def _position_profile(cells: xr.Dataset) -> xr.Dataset:
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


def _trends(
    slopes: np.ndarray, is_b: np.ndarray, n_permutations: int, seed: int, q: float
) -> list[dict]:
    """Per layer band (thirds of the layers where this statistic has slopes): does B − A change with position?

    Tested at the prompt level: each prompt's least-squares slope over its positions
    (``prompt_slope``), averaged over the band's layers, compared between the scenarios by
    Welch's t with a permutation p over prompt labels (BH over the bands). Prompts of
    different lengths and offsets stay exchangeable under the null, which a test over the
    positions of the cell means is not (late positions average only long prompts).
    slopes is (prompt, layer) over length-matched prompts: a short prompt's slope is steeper
    (its first tokens weigh more), so unmatched lengths would make a length effect look like a trend.
    """
    layers = np.flatnonzero(np.isfinite(slopes).any(axis=0))
    thirds = [x for x in np.array_split(layers, 3) if x.size]
    names = (
        ["early", "middle", "late"]
        if len(thirds) == 3
        else [f"band {i}" for i in range(len(thirds))]
    )
    out = []
    for k, (name, band) in enumerate(zip(names, thirds)):
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
    for r, qq in zip(out, adjusted):
        if r["p"] is not None:
            r["q"] = float(qq)
            r["trend"] = bool(qq < q)
    return out


# ---------------------------------------------------------------- the whole comparison


def compare(
    ds: xr.Dataset,
    *,
    q: float = 0.05,
    min_count: int = 2,
    n_permutations: int = 1000,
    n_bootstrap: int = 500,
    seed: int = 0,
    match_length: bool = False,
    max_excluded_gap: float = MAX_EXCLUDED_GAP,
) -> CompareResult:
    """Compare the first two scenarios (B − A) of a run's store; see the module docstring."""
    if not 0 < q < 1:
        raise UserError(f"--q {q}: must be between 0 and 1")
    if not 0 <= max_excluded_gap <= 1:
        raise UserError(f"--max-excluded-gap {max_excluded_gap}: must be a share between 0 and 1")
    if n_permutations < 1 or n_bootstrap < 2:
        raise UserError("need at least 1 permutation and 2 bootstrap replicates")
    if "prompt_value" not in ds:
        raise UserError(
            "this run has no per-prompt values (prompt_value): extract it again with this jbtrace"
        )
    cells = cell_tests(ds, q=q, min_count=min_count)
    a, b = (str(x) for x in ds.scenario.values[:2])
    scen = ds["prompt_scenario"].values
    models = {}
    shape = (ds.sizes["model"], ds.sizes["stat"], ds.sizes["layer"])
    layer_profile = xr.Dataset(
        {
            k: (("model", "stat", "layer"), np.full(shape, np.nan))
            for k in ("diff", "ci_low", "ci_high", "g", "p", "q")
        },
        coords={k: ds[k].values for k in ("model", "stat", "layer")},
    )
    boot_index: dict[str, dict[str, np.ndarray]] = {}
    for model in map(str, ds.model.values):
        tokens_all = ds["prompt_tokens"].sel(model=model).values
        has_layer = (ds["count"].sel(model=model).sum(["scenario", "stat", "position"]) > 0).values
        entry = {
            "label": str(ds["model_label"].sel(model=model).values)
            if "model_label" in ds
            else model,
            "random_init": bool(ds["random_init"].sel(model=model).values)
            if "random_init" in ds
            else None,
            "n_layers": int(has_layer.sum()),
            "lengths": {s: length_quantiles(tokens_all[scen == s]) for s in (a, b)},
            "stats": {},
        }
        for stat in map(str, ds.stat.values):
            pv = _prompts(ds, model, stat, a, b)
            _check_exclusion(model, stat, pv, a, b, max_excluded_gap)
            summary = {
                "cells": _cell_summary(cells.sel(model=model, stat=stat)),
                "prompts_used": {"a": int((~pv.is_b).sum()), "b": int(pv.is_b.sum())},
                "prompts_excluded": pv.excluded,
                "nonfinite": _nonfinite(ds, model, stat, a, b),
            }
            entry["stats"][stat] = summary
            if not pv.usable:
                summary.update(
                    note="fewer than two usable prompts in a scenario",
                    bands=[],
                    trends=[],
                    index=None,
                )
                continue
            perm_b, boot_a, boot_b = _resampling(
                scen, pv.keep, a, b, n_permutations, n_bootstrap, seed
            )
            prof = _layer_profile(pv, perm_b, boot_a, boot_b, q)
            for k in layer_profile.data_vars:
                layer_profile[k].loc[{"model": model, "stat": stat, "layer": pv.layers}] = prof[k]
            boot_index.setdefault(stat, {})[model] = prof["index_boot"]
            summary.update(
                bands=_bands(pv.layers, prof, cells.sel(model=model, stat=stat), q),
                index=_index_summary(prof),
            )
            if (
                "prompt_slope" in ds
            ):  # on length-matched prompts: a prompt's slope depends on how far it reaches
                matched = match_lengths(
                    tokens_all[pv.keep], pv.is_b, np.random.default_rng([seed, 3])
                )
                slopes = (
                    ds["prompt_slope"]
                    .sel(model=model, stat=stat)
                    .transpose("prompt", "layer")
                    .values[pv.keep[matched]]
                )
                summary["trends"] = _trends(slopes, pv.is_b[matched], n_permutations, seed, q)
            else:
                summary.update(
                    trends=[],
                    trend_note="this run has no per-prompt slopes (prompt_slope): extract it "
                    "again with this jbtrace to test position trends",
                )
            if match_length:
                summary["length_matched"] = _length_matched(
                    pv, tokens_all[pv.keep], prof, n_permutations, seed, q
                )
        models[model] = entry
    result = CompareResult(
        cells=cells,
        layer_profile=layer_profile.assign(significant=layer_profile["q"] < q),
        position_profile=_position_profile(cells),
        models=models,
        ranking={stat: _ranking(reps, models, stat) for stat, reps in boot_index.items()},
        params={
            "q": q,
            "min_count": max(int(min_count), 2),
            "n_permutations": n_permutations,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "match_length": match_length,
            "level": LEVEL,
            "max_excluded_gap": max_excluded_gap,
        },
        scenarios=(a, b),
    )
    from jbtrace.analysis.observe import observations

    result.observations = observations(result)
    return result


def _resampling(
    scen: np.ndarray, keep: np.ndarray, a: str, b: str, n_perm: int, n_boot: int, seed: int
):
    """Permuted B labels and bootstrap counts drawn over all A and B prompts, then cut to ``keep``.

    The draws depend only on the seed and the prompt axis, so every model of a run gets the
    same permutations and the same bootstrap samples (a paired bootstrap across models).
    """
    rng = np.random.default_rng([seed, 1])
    in_ab = np.flatnonzero(np.isin(scen, [a, b]))
    perm_b = np.zeros((n_perm, scen.size))
    perm_b[:, in_ab] = rng.permuted(np.tile((scen[in_ab] == b).astype(float), (n_perm, 1)), axis=1)
    boot = np.zeros((2, n_boot, scen.size))
    for k, name in enumerate((a, b)):
        idx = np.flatnonzero(scen == name)
        boot[k][:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1 / idx.size), size=n_boot)
    return perm_b[:, keep], boot[0][:, keep], boot[1][:, keep]


def _cell_summary(c: xr.Dataset) -> dict:
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


def _index_summary(prof: dict) -> dict:
    lo, hi = np.nanpercentile(prof["index_boot"], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {
        "value": prof["index"],
        "ci_low": float(lo),
        "ci_high": float(hi),
        "null_mean": prof["index_null"],
        "p": prof["index_p"],
    }


def _ranking(reps: dict[str, np.ndarray], models: dict, stat: str) -> dict:
    """Order models by the sensitivity index; how often each pairwise order holds across paired bootstraps."""
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
