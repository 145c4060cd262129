"""Which differences between the two scenarios are real: the whole comparison of a run's store.

Per cell (model, stat, layer, position) the stored moments give Welch's t, Hedges' g and
a 95% CI of B − A, with Benjamini–Hochberg over the tested cells of a model and statistic
(``cells``). The per-prompt pooled values ``prompt_value`` (prompt × layer) give the layer
profile (permutation tests of Welch's t, bootstrap CIs; ``profiles``), the sensitivity index
and its ranking across models (``ranking``), and the length-matched comparison (``lengths``);
the per-prompt slopes over position ``prompt_slope`` give the position trends, tested at the
prompt level (``trends``). The per-position profile comes from the cell moments (see the
README, section Compare, for every definition). This module puts the pieces together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from jbtrace.analysis.cells import cell_summary, cell_tests, position_profile
from jbtrace.analysis.inference import LEVEL
from jbtrace.analysis.lengths import length_matched, length_quantiles
from jbtrace.analysis.profiles import (
    PromptValues,
    bands,
    check_exclusion,
    layer_profile,
    nonfinite_counts,
    prompt_values,
    resampling,
)
from jbtrace.analysis.ranking import index_summary, ranking
from jbtrace.analysis.trends import position_trends
from jbtrace.errors import UserError
from jbtrace.prompts.matching import match_lengths

CELL_VARS = ("diff", "g", "ci_low", "ci_high", "p", "q", "significant")
# refuse when non-finite values exclude shares of prompts this far apart in A and B
MAX_EXCLUDED_GAP = 0.05
PROFILE_VARS = ("diff", "ci_low", "ci_high", "g", "p", "q")


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


@dataclass
class _Options:
    """The settings of one comparison, as ``compare`` was given them."""

    q: float
    min_count: int
    n_permutations: int
    n_bootstrap: int
    seed: int
    match_length: bool
    max_excluded_gap: float

    def check(self) -> None:
        if not 0 < self.q < 1:
            raise UserError(f"--q {self.q}: must be between 0 and 1")
        if not 0 <= self.max_excluded_gap <= 1:
            raise UserError(
                f"--max-excluded-gap {self.max_excluded_gap}: must be a share between 0 and 1"
            )
        if self.n_permutations < 1 or self.n_bootstrap < 2:
            raise UserError("need at least 1 permutation and 2 bootstrap replicates")

    def params(self) -> dict:
        return {
            "q": self.q,
            "min_count": max(int(self.min_count), 2),
            "n_permutations": self.n_permutations,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "match_length": self.match_length,
            "level": LEVEL,
            "max_excluded_gap": self.max_excluded_gap,
        }


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
    opt = _Options(q, min_count, n_permutations, n_bootstrap, seed, match_length, max_excluded_gap)
    opt.check()
    if "prompt_value" not in ds:
        raise UserError(
            "this run has no per-prompt values (prompt_value): extract it again with this jbtrace"
        )
    cells = cell_tests(ds, q=q, min_count=min_count)
    a, b = (str(x) for x in ds.scenario.values[:2])
    shape = (ds.sizes["model"], ds.sizes["stat"], ds.sizes["layer"])
    profile = xr.Dataset(
        {k: (("model", "stat", "layer"), np.full(shape, np.nan)) for k in PROFILE_VARS},
        coords={k: ds[k].values for k in ("model", "stat", "layer")},
    )
    boot_index: dict[str, dict[str, np.ndarray]] = {}
    models = {}
    for model in map(str, ds.model.values):
        models[model] = entry = _model_entry(ds, model, a, b)
        for stat in map(str, ds.stat.values):
            summary, prof, pv = _compare_stat(ds, cells, model, stat, (a, b), opt)
            entry["stats"][stat] = summary
            if prof is None:
                continue
            for k in PROFILE_VARS:
                profile[k].loc[{"model": model, "stat": stat, "layer": pv.layers}] = prof[k]
            boot_index.setdefault(stat, {})[model] = prof["index_boot"]
    result = CompareResult(
        cells=cells,
        layer_profile=profile.assign(significant=profile["q"] < q),
        position_profile=position_profile(cells),
        models=models,
        ranking={stat: ranking(reps, models, stat) for stat, reps in boot_index.items()},
        params=opt.params(),
        scenarios=(a, b),
    )
    from jbtrace.analysis.observe import observations

    result.observations = observations(result)
    return result


def _model_entry(ds: xr.Dataset, model: str, a: str, b: str) -> dict:
    """What a comparison says about one model before its statistics: label, layers, lengths."""
    scen = ds["prompt_scenario"].values
    tokens = ds["prompt_tokens"].sel(model=model).values
    has_layer = (ds["count"].sel(model=model).sum(["scenario", "stat", "position"]) > 0).values
    return {
        "label": str(ds["model_label"].sel(model=model).values) if "model_label" in ds else model,
        "random_init": bool(ds["random_init"].sel(model=model).values)
        if "random_init" in ds
        else None,
        "n_layers": int(has_layer.sum()),
        "lengths": {s: length_quantiles(tokens[scen == s]) for s in (a, b)},
        "stats": {},
    }


def _compare_stat(
    ds: xr.Dataset,
    cells: xr.Dataset,
    model: str,
    stat: str,
    scenarios: tuple[str, str],
    opt: _Options,
) -> tuple[dict, dict | None, PromptValues]:
    """One model and statistic: the summary, the layer profile (None when unusable), the prompts."""
    a, b = scenarios
    pv = prompt_values(ds, model, stat, a, b)
    check_exclusion(model, stat, pv, a, b, opt.max_excluded_gap)
    model_cells = cells.sel(model=model, stat=stat)
    summary = {
        "cells": cell_summary(model_cells),
        "prompts_used": {"a": int((~pv.is_b).sum()), "b": int(pv.is_b.sum())},
        "prompts_excluded": pv.excluded,
        "nonfinite": nonfinite_counts(ds, model, stat, a, b),
    }
    if not pv.usable:
        summary.update(
            note="fewer than two usable prompts in a scenario", bands=[], trends=[], index=None
        )
        return summary, None, pv
    scen = ds["prompt_scenario"].values
    perm_b, boot_a, boot_b = resampling(
        scen, pv.keep, a, b, opt.n_permutations, opt.n_bootstrap, opt.seed
    )
    prof = layer_profile(pv, perm_b, boot_a, boot_b, opt.q)
    summary.update(bands=bands(pv.layers, prof, model_cells, opt.q), index=index_summary(prof))
    tokens = ds["prompt_tokens"].sel(model=model).values[pv.keep]
    if "prompt_slope" in ds:
        summary["trends"] = _trends(ds, model, stat, pv, tokens, opt)
    else:
        summary.update(
            trends=[],
            trend_note="this run has no per-prompt slopes (prompt_slope): extract it "
            "again with this jbtrace to test position trends",
        )
    if opt.match_length:
        summary["length_matched"] = length_matched(
            pv, tokens, prof, opt.n_permutations, opt.seed, opt.q
        )
    return summary, prof, pv


def _trends(
    ds: xr.Dataset, model: str, stat: str, pv: PromptValues, tokens: np.ndarray, opt: _Options
) -> list[dict]:
    """Position trends on length-matched prompts: a prompt's slope depends on how far it reaches."""
    matched = match_lengths(tokens, pv.is_b, np.random.default_rng([opt.seed, 3]))
    slopes = (
        ds["prompt_slope"]
        .sel(model=model, stat=stat)
        .transpose("prompt", "layer")
        .values[pv.keep[matched]]
    )
    return position_trends(slopes, pv.is_b[matched], opt.n_permutations, opt.seed, opt.q)
