"""Per prompt: the layer profile of B − A from per-prompt pooled values, its bands and resampling.

``prompt_values`` picks the usable prompts and layers of one model and statistic; the layer
profile tests each layer by a permutation of Welch's t (BH over layers) with bootstrap CIs, and
gives the sensitivity index; ``bands`` are the runs of significant layers with one sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from jbtrace.analysis.inference import LEVEL, bh, indicators, permutation_p, two_groups
from jbtrace.errors import UserError


@dataclass
class PromptValues:
    """One model's per-prompt pooled values for one statistic: the usable prompts and layers."""

    values: np.ndarray  # (prompt, layer) over the kept prompts and layers
    is_b: np.ndarray  # (prompt,) bool
    keep: np.ndarray  # indices into the store's prompt axis
    layers: np.ndarray  # layer indices kept
    excluded: dict  # {"a", "b"}: prompts left out for a value that is not finite
    total: dict  # {"a", "b"}: prompts in the scenario

    @property
    def usable(self) -> bool:
        return self.is_b.sum() >= 2 and (~self.is_b).sum() >= 2 and self.layers.size > 0


def prompt_values(ds: xr.Dataset, model: str, stat: str, a: str, b: str) -> PromptValues:
    """Prompts of A and B whose values are finite at every layer that has data.

    A prompt counts whole or not at all.
    """
    scen = ds["prompt_scenario"].values
    in_ab = np.isin(scen, [a, b])
    values = ds["prompt_value"].sel(model=model, stat=stat).transpose("prompt", "layer").values
    layers = np.flatnonzero(np.isfinite(values[in_ab]).any(axis=0))
    ok = in_ab & np.isfinite(values[:, layers]).all(axis=1)
    keep = np.flatnonzero(ok)
    total = {"a": int((scen == a).sum()), "b": int((scen == b).sum())}
    excluded = {"a": int((scen[~ok] == a).sum()), "b": int((scen[~ok] == b).sum())}
    return PromptValues(
        values[np.ix_(keep, layers)], scen[keep] == b, keep, layers, excluded, total
    )


def check_exclusion(model: str, stat: str, pv: PromptValues, a: str, b: str, limit: float) -> None:
    """Refuse a comparison whose prompts were removed unequally.

    For example by fp16 overflow in one scenario.
    """
    if not pv.total["a"] or not pv.total["b"]:
        return
    share = {k: pv.excluded[k] / pv.total[k] for k in ("a", "b")}
    gap = abs(share["a"] - share["b"])
    if gap > limit:
        raise UserError(
            f"{model}, {stat}: non-finite values exclude "
            f"{pv.excluded['a']} of {pv.total['a']} {a} and "
            f"{pv.excluded['b']} of {pv.total['b']} {b} prompts "
            f"({gap:.0%} apart, limit {limit:.0%}); the comparison would be biased: "
            "extract again in float32 or bfloat16, or allow it with --max-excluded-gap"
        )


def nonfinite_counts(ds: xr.Dataset, model: str, stat: str, a: str, b: str) -> dict:
    """Values that were not finite, per scenario.

    Token values; prompt-bin values with relative alignment.
    """
    nf = ds["nonfinite"].sel(model=model, stat=stat).sum(["layer", "position"])
    return {"a": int(nf.sel(scenario=a)), "b": int(nf.sel(scenario=b))}


def resampling(
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


def layer_profile(
    pv: PromptValues, perm_b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, q: float
) -> dict:
    """Per-layer B − A of prompt means.

    Welch-t permutation p, BH over layers, bootstrap CI, Hedges' g.
    """
    w_a, w_b = indicators(pv.is_b)
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


def bands(layers: np.ndarray, prof: dict, cells: xr.Dataset, q: float) -> list[dict]:
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
