"""Compare: every statistic against an independent computation (scipy, statsmodels, numpy).

Synthetic stores are built here from raw per-token values with plain numpy (an extractor
of our own, independent of jbtrace.extract), so the tests know the truth.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from jbtrace.analysis import compare, inference
from jbtrace.analysis.observe import ranking_sentences
from jbtrace.analysis.trends import position_trends
from jbtrace.errors import UserError
from jbtrace.models import load_model
from jbtrace.trace import store
from jbtrace.trace.extract import ExtractOptions, extract
from jbtrace.views import outputs
from jbtrace.views.compare_md import compare_markdown


def synthetic_store(
    models: dict, is_b: np.ndarray, names=("benign", "jailbreak"), slopes: bool = True
) -> xr.Dataset:
    """A store from raw values (prompt, layer, position) per model; NaN marks positions a prompt
    does not reach.

    A model's value is one array (statistic log_norm) or a dict {stat: array}. ``prompt_slope``
    is each prompt's least-squares slope on position from numpy's polyfit.
    """
    models = {m: v if isinstance(v, dict) else {"log_norm": v} for m, v in models.items()}
    stat_names = list(next(iter(models.values())))
    n_models, n_stats = len(models), len(stat_names)
    n_prompts, n_layers, n_pos = next(iter(models.values()))[stat_names[0]].shape
    shape = (n_models, 2, n_stats, n_layers, n_pos)
    mean, var, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, np.int64)
    nonfinite = np.zeros(shape, np.int64)
    prompt_value = np.full((n_models, n_stats, n_prompts, n_layers), np.nan)
    prompt_slope = np.full_like(prompt_value, np.nan)
    tokens = np.zeros((n_models, n_prompts), np.int64)
    for m, per_stat in enumerate(models.values()):
        for k, raw in enumerate(per_stat.values()):
            reached = ~np.isnan(raw)  # NaN: not reached; inf: reached but not finite (an overflow)
            for s, rows in enumerate((~is_b, is_b)):
                x = np.where(np.isfinite(raw[rows]), raw[rows], np.nan)
                count[m, s, k] = np.isfinite(x).sum(0)
                nonfinite[m, s, k] = (reached[rows] & ~np.isfinite(raw[rows])).sum(0)
                with _quiet():
                    mean[m, s, k] = np.nanmean(x, 0)
                    var[m, s, k] = np.nanvar(x, 0, ddof=1)
            with _quiet():
                prompt_value[m, k] = np.where(np.isinf(raw).any(2), np.nan, np.nanmean(raw, 2))
            if slopes:
                prompt_slope[m, k] = _polyfit_slopes(raw)
        tokens[m] = (~np.isnan(per_stat[stat_names[0]][:, 0])).sum(1)
    var[count < 2] = np.nan
    dims = ("model", "scenario", "stat", "layer", "position")
    data = {
        "mean": (dims, mean),
        "var": (dims, var),
        "count": (dims, count),
        "nonfinite": (dims, nonfinite),
        "prompt_value": (("model", "stat", "prompt", "layer"), prompt_value),
        "prompt_tokens": (("model", "prompt"), tokens),
    }
    if slopes:
        data["prompt_slope"] = (("model", "stat", "prompt", "layer"), prompt_slope)
    return xr.Dataset(
        data,
        coords={
            "model": list(models),
            "scenario": list(names),
            "stat": stat_names,
            "layer": np.arange(n_layers),
            "position": np.arange(n_pos),
            "prompt": np.arange(n_prompts),
            "prompt_scenario": ("prompt", np.where(is_b, names[1], names[0])),
            "model_label": ("model", list(models)),
            "random_init": ("model", [False] * n_models),
        },
        attrs={"align": "start"},
    )


def _polyfit_slopes(raw: np.ndarray) -> np.ndarray:
    """(prompt, layer) slope of each prompt's reached values on position; NaN with fewer than two
    or any not finite."""
    out = np.full(raw.shape[:2], np.nan)
    for i, j in np.ndindex(*raw.shape[:2]):
        y = raw[i, j]
        pos = np.flatnonzero(~np.isnan(y))
        if pos.size >= 2 and np.isfinite(y[pos]).all():
            out[i, j] = np.polyfit(pos, y[pos], 1)[0]
    return out


class _quiet:
    def __enter__(self):
        self.state = np.seterr(all="ignore")
        import warnings

        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self.warn.__exit__(*exc)
        np.seterr(**self.state)


def raw_values(rng, n_prompts, n_layers, n_pos, lengths):
    raw = rng.normal(size=(n_prompts, n_layers, n_pos))
    beyond = np.arange(n_pos)[None, :] >= np.asarray(lengths)[:, None]  # (prompt, position)
    raw[np.broadcast_to(beyond[:, None, :], raw.shape)] = np.nan
    return raw


# ---------------------------------------------------------------- cells against scipy / statsmodels


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_welch_cells_match_scipy_on_per_prompt_values(prompt_sets):
    """Extract with jbtrace, then recompute every cell from output_hidden_states with scipy's
    Welch test."""
    import torch

    lm = load_model(
        "tiny:gptj", dtype="float64"
    )  # float64: batching noise must not blur the comparison
    ds = store.build([extract(lm, prompt_sets, ExtractOptions())], prompt_sets)
    cells = compare.cell_tests(ds, q=0.05, min_count=2).sel(model="gptj", stat="log_norm")
    per_cell = {}  # (scenario, layer, position) -> values
    with torch.inference_mode():
        for s, ps in enumerate(prompt_sets):
            for text in ps.texts:
                ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
                hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
                for layer, h in enumerate(hs):
                    for pos, v in enumerate(torch.log(h[0].norm(dim=-1)).tolist()):
                        per_cell.setdefault((s, layer, pos), []).append(v)
    checked = 0
    for layer in range(lm.n_layers):
        for pos in range(ds.sizes["position"]):
            a, b = per_cell.get((0, layer, pos), []), per_cell.get((1, layer, pos), [])
            cell = cells.sel(layer=layer, position=pos)
            if len(a) < 2 or len(b) < 2:
                assert (
                    int(cell["status"]) in (2, 3)
                    and np.isnan(float(cell["diff"]))
                    and not bool(cell["significant"])
                )
                continue
            if int(cell["status"]) == 4:  # constant (the BOS token of a causal model)
                assert np.ptp(a) < 1e-5 and np.ptp(b) < 1e-5
                continue
            res = sps.ttest_ind(b, a, equal_var=False)
            ci = res.confidence_interval(0.95)
            assert float(cell["p"]) == pytest.approx(res.pvalue, rel=1e-6, abs=1e-12)
            assert float(cell["diff"]) == pytest.approx(np.mean(b) - np.mean(a), abs=1e-10)
            assert float(cell["ci_low"]) == pytest.approx(ci.low, abs=1e-9)
            assert float(cell["ci_high"]) == pytest.approx(ci.high, abs=1e-9)
            df = len(a) + len(b) - 2
            sp = np.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / df)
            j = math.gamma(df / 2) / (
                math.sqrt(df / 2) * math.gamma((df - 1) / 2)
            )  # Hedges' exact correction
            assert float(cell["g"]) == pytest.approx(
                (np.mean(b) - np.mean(a)) / sp * j, rel=1e-7, abs=1e-10
            )
            checked += 1
    assert checked > 100
    tested = cells["status"].values == 0
    expected = multipletests(cells["p"].values[tested], method="fdr_bh")[1]
    np.testing.assert_allclose(cells["q"].values[tested], expected, rtol=1e-12)


def test_bh_matches_statsmodels():
    rng = np.random.default_rng(3)
    p = np.concatenate(
        [rng.uniform(size=300), rng.uniform(0, 1e-3, size=40), [0.5, 0.5, 0.5], [np.nan] * 7]
    )
    rng.shuffle(p)
    q = inference.bh(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(q[finite], multipletests(p[finite], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(q[~finite]).all()
    assert np.isnan(inference.bh(np.full(4, np.nan))).all()


def test_hedges_j_exact():
    from math import gamma, sqrt

    for df in (2, 5, 17, 60):
        assert inference.hedges_j(df) == pytest.approx(
            gamma(df / 2) / (sqrt(df / 2) * gamma((df - 1) / 2)), rel=1e-12
        )


def test_relative_bins_count_prompts_and_keep_the_cell_level():
    """Null halves with per-prompt offsets and unequal lengths, binned relatively (8 bins).

    Folded one value per (prompt, bin) as extraction does, Welch's p < 0.05 in about 5% of cells;
    the same tokens folded as if they were prompts (the old behaviour) reject far more often.
    """
    import torch

    from jbtrace.trace.accumulate import Moments
    from jbtrace.trace.extract import bin_means, positions

    rng = np.random.default_rng(15)
    n, bins, width = 60, 8, 160
    rejected = {"prompt": [], "token": []}
    for _ in range(100):
        lengths = np.clip(np.round(np.exp(rng.normal(3.5, 0.7, n))), 2, width).astype(int)
        mask = torch.from_numpy(np.arange(width)[None] < lengths[:, None]).long()
        values = torch.from_numpy(rng.normal(size=(n, width)) + rng.normal(0, 1, (n, 1)))[
            None, None
        ]
        pos = positions(mask, "relative", bins)
        folded, folded_pos = bin_means(values, pos, bins)
        assert ((folded_pos >= 0).sum(0) <= n).all()
        is_b = torch.from_numpy(rng.permutation(np.arange(n) >= n // 2))
        for kind, (v, p) in {"prompt": (folded, folded_pos), "token": (values, pos)}.items():
            moments = []
            for rows in (~is_b, is_b):
                m, keep = Moments(bins), p[rows] >= 0
                m.add(v[0, 0][rows][keep], p[rows][keep])
                moments += [m.count.numpy(), m.mean.numpy(), m.variance().numpy()]
            rejected[kind].append(inference.welch(*moments)["p"] < 0.05)
    assert 0.02 <= np.mean(rejected["prompt"]) <= 0.08
    assert np.mean(rejected["token"]) > 0.2


# ------------------------------------------------------- prompt-level tests, cells of one scenario


def test_layer_profile_matches_numpy_and_scipy_permutation_test():
    rng = np.random.default_rng(0)
    n, is_b = 40, np.arange(40) >= 22
    raw = raw_values(rng, n, 4, 12, rng.integers(3, 13, n))
    raw[is_b, 2] += 0.6  # a real difference at layer 2 only
    ds = synthetic_store({"m": raw}, is_b)
    result = compare.compare(ds, n_permutations=3000, n_bootstrap=400, seed=1)
    lp = result.layer_profile.sel(model="m", stat="log_norm")
    pv = ds["prompt_value"].sel(model="m", stat="log_norm").values
    for layer in range(4):
        a, b = pv[~is_b, layer], pv[is_b, layer]
        assert float(lp["diff"].sel(layer=layer)) == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        ref = sps.permutation_test(
            (b, a), _welch_t, n_resamples=3000, vectorized=True, random_state=2
        ).pvalue
        assert float(lp["p"].sel(layer=layer)) == pytest.approx(ref, abs=0.03)
        half = 1.96 * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        width = float(lp["ci_high"].sel(layer=layer) - lp["ci_low"].sel(layer=layer))
        assert width == pytest.approx(2 * half, rel=0.3)  # bootstrap CI ≈ normal CI
    assert list(np.flatnonzero(lp["significant"].values)) == [2]
    bands = result.models["m"]["stats"]["log_norm"]["bands"]
    assert [b["layers"] for b in bands] == [[2, 2]] and bands[0]["sign"] == 1
    assert bands[0]["ci_low"] < bands[0]["mean_diff"] < bands[0]["ci_high"]


def test_layer_profile_keeps_its_level_with_unequal_sizes_and_spreads():
    """Equal means, n 200 vs 40, sd 1 vs 3: the raw mean difference rejected 28% at 5%; Welch's t
    keeps 5%.

    Each of 400 layers is an independent null replicate (one value per prompt and layer).
    """
    rng = np.random.default_rng(12)
    is_b = np.arange(240) >= 200
    raw = rng.normal(size=(240, 400, 1)) * np.where(is_b, 3.0, 1.0)[:, None, None]
    ds = synthetic_store({"m": raw}, is_b, slopes=False)
    for match_length in (False, True):
        result = compare.compare(
            ds, n_permutations=400, n_bootstrap=20, seed=4, match_length=match_length
        )
        p = result.layer_profile["p"].sel(model="m", stat="log_norm").values
        assert p.size == 400 and 0.025 <= (p < 0.05).mean() <= 0.08
    matched = result.models["m"]["stats"]["log_norm"][
        "length_matched"
    ]  # one length: 40 + 40 prompts kept
    assert matched["prompts_kept"] == {"a": 40, "b": 40}
    assert 0.02 <= np.mean([x["p"] < 0.05 for x in matched["layers"]]) <= 0.09


def test_cells_with_one_scenario_only_are_never_differences():
    rng = np.random.default_rng(1)
    is_b = np.arange(30) >= 15
    lengths = np.where(is_b, 5, 10)  # positions 5..9 are reached by benign prompts only
    raw = raw_values(rng, 30, 3, 10, lengths)
    raw[:, :, 7:] += 5  # would look like a huge difference if one-sided cells were compared
    result = compare.compare(synthetic_store({"m": raw}, is_b), n_permutations=50, n_bootstrap=20)
    late = result.cells.sel(model="m", position=slice(5, None))
    assert late["diff"].isnull().all() and not late["significant"].any()
    assert (late["status"] == 2).all()
    assert result.models["m"]["stats"]["log_norm"]["cells"]["one_scenario_only"] == 3 * 5


def test_min_count_excludes_and_counts():
    rng = np.random.default_rng(2)
    is_b = np.arange(20) >= 10
    raw = raw_values(rng, 20, 2, 8, np.r_[np.full(17, 8), np.full(3, 4)])
    cells = compare.cell_tests(synthetic_store({"m": raw}, is_b), min_count=8).sel(model="m")
    # B has 10 prompts at positions 0..3 and 7 at positions 4..7: those cells fall below min_count 8
    assert (cells["status"].sel(position=slice(4, None)) == 3).all()
    assert (cells["status"].sel(position=slice(0, 3)) == 0).all()


# ---------------------------------------------------------------- position trend


def _trend_store(slope: float, seed: int):
    rng = np.random.default_rng(seed)
    n, n_pos = 60, 48
    is_b = np.arange(n) >= 30
    raw = raw_values(rng, n, 6, n_pos, np.full(n, n_pos)) * 0.5
    raw[is_b] += slope * np.arange(n_pos)
    return synthetic_store({"m": raw}, is_b)


def _welch_t(x, y, axis):
    return sps.ttest_ind(x, y, equal_var=False, axis=axis).statistic


def test_position_trend_found_with_right_sign_and_matches_scipy():
    """A trend planted in B only: the difference of per-prompt polyfit slopes, Welch CI and
    permutation p (scipy)."""
    ds = _trend_store(0.01, 0)
    result = compare.compare(ds, n_permutations=2000, n_bootstrap=50)
    trends = result.models["m"]["stats"]["log_norm"]["trends"]
    assert [t["layers"] for t in trends] == [[0, 1], [2, 3], [4, 5]]
    is_b = ds["prompt_scenario"].values == "jailbreak"
    slopes = ds["prompt_slope"].sel(model="m", stat="log_norm").values
    for k, t in enumerate(trends):
        assert t["trend"] and t["ci_low"] < 0.01 < t["ci_high"]
        y = slopes[:, slice(t["layers"][0], t["layers"][1] + 1)].mean(1)
        assert t["diff"] == pytest.approx(y[is_b].mean() - y[~is_b].mean(), abs=1e-12)
        ci = sps.ttest_ind(y[is_b], y[~is_b], equal_var=False).confidence_interval(0.95)
        assert (t["ci_low"], t["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
        ref = sps.permutation_test(
            (y[is_b], y[~is_b]), _welch_t, n_resamples=2000, vectorized=True, random_state=k
        ).pvalue
        assert t["p"] == pytest.approx(ref, abs=0.01)
    assert any("increases with position" in s for s in result.observations["m"])


def test_no_position_trend_reported_without_one():
    result = compare.compare(_trend_store(0.0, 1), n_permutations=500, n_bootstrap=50)
    assert not any(t["trend"] for t in result.models["m"]["stats"]["log_norm"]["trends"])
    assert any(s.startswith("No detectable position trend") for s in result.observations["m"])


def _null_models(rng, n_models, n, n_layers, max_len, offset_sd=1.0):
    """Null replicates: lognormal lengths, a per-prompt offset, AR(1) noise over positions, the
    same law in A and B."""
    models = {}
    for m in range(n_models):
        lengths = np.clip(np.round(np.exp(rng.normal(2.8, 0.8, n))), 2, max_len).astype(int)
        noise = rng.normal(size=(n, n_layers, max_len))
        for t in range(1, max_len):
            noise[..., t] = 0.6 * noise[..., t - 1] + 0.8 * noise[..., t]
        offset = (
            rng.normal(0, offset_sd, (n, 1, 1))
            + 0.05 * np.log(lengths)[:, None, None] * np.arange(max_len) / max_len
        )
        raw = offset + noise
        raw[
            np.broadcast_to(
                (np.arange(max_len)[None, :] >= lengths[:, None])[:, None, :], raw.shape
            )
        ] = np.nan
        models[f"m{m}"] = raw
    return models


def test_position_trends_keep_their_level_with_unequal_lengths_and_prompt_offsets():
    """Two random halves of one pool (every trend is false): lengths differ per prompt, each
    prompt has its own offset.

    Tested over the positions of the cell means, about half of such bands showed a trend; at the
    prompt level the share of false trends stays at the nominal level (BH over 3 bands at q = 0.05).
    """
    rng = np.random.default_rng(11)
    n = 60
    is_b = rng.permutation(np.arange(n) >= n // 2)
    ds = synthetic_store(_null_models(rng, 80, n, 6, 64), is_b)
    result = compare.compare(ds, n_permutations=200, n_bootstrap=20, seed=3)
    trends = [t for m in result.models.values() for t in m["stats"]["log_norm"]["trends"]]
    assert len(trends) == 240 and all(t["p"] is not None for t in trends)
    share = np.mean([t["trend"] for t in trends])
    assert (
        share <= 0.05
    )  # nominal family-wise rate per model ≤ 0.05 over 3 bands → ≤ 0.05 of bands; 42–53% before
    pvals = np.array([t["p"] for t in trends])
    assert 0.02 <= (pvals < 0.05).mean() <= 0.09  # per-band p-values uniform under the null


def test_no_position_trend_from_length_alone():
    """Jailbreak prompts longer, a large first token, nothing else: unmatched per-prompt slopes
    differ by length only."""
    rng = np.random.default_rng(16)
    n, width = 200, 96
    is_b = np.arange(n) >= n // 2
    models = {}
    for m in range(10):
        lengths = np.clip(
            np.round(np.exp(rng.normal(np.where(is_b, 3.6, 2.9), 0.6))), 2, width
        ).astype(int)
        raw = raw_values(rng, n, 3, width, lengths) * 0.3
        raw[:, :, 0] += 3.0
        models[f"m{m}"] = raw
    result = compare.compare(synthetic_store(models, is_b), n_permutations=200, n_bootstrap=20)
    trends = [t for m in result.models.values() for t in m["stats"]["log_norm"]["trends"]]
    assert sum(t["trend"] for t in trends) <= 2 and all(
        t["n_prompts"]["a"] == t["n_prompts"]["b"] > 30 for t in trends
    )
    slopes = synthetic_store({"m0": models["m0"]}, is_b)["prompt_slope"].values[0, 0]
    assert all(
        t["trend"] for t in position_trends(slopes, is_b, 200, 0, 0.05)
    )  # unmatched: length looks like a trend


def test_trend_bands_are_chosen_per_statistic():
    """cos_prev has no layer 0: its thirds are of layers 1..6, and every band is tested."""
    rng = np.random.default_rng(13)
    is_b = np.arange(40) >= 20
    lengths = rng.integers(4, 16, 40)
    log_norm = raw_values(rng, 40, 7, 16, lengths)
    cos_prev = raw_values(rng, 40, 7, 16, lengths)
    cos_prev[:, 0] = np.nan
    result = compare.compare(
        synthetic_store({"m": {"log_norm": log_norm, "cos_prev": cos_prev}}, is_b),
        n_permutations=100,
        n_bootstrap=20,
    )
    stats = result.models["m"]["stats"]
    assert [t["layers"] for t in stats["log_norm"]["trends"]] == [[0, 2], [3, 4], [5, 6]]
    assert [t["layers"] for t in stats["cos_prev"]["trends"]] == [[1, 2], [3, 4], [5, 6]]
    assert all(t["p"] is not None for s in stats.values() for t in s["trends"])


# ---------------------------------------------------------------- index and ranking


def test_sensitivity_index_and_ranking():
    rng = np.random.default_rng(4)
    n = 80
    is_b = np.arange(n) >= 40
    strong, weak = (raw_values(rng, n, 5, 6, np.full(n, 6)) for _ in range(2))
    strong[is_b] += 1.0
    weak[is_b] += 0.3
    ds = synthetic_store({"strong": strong, "weak": weak, "twin": weak.copy()}, is_b)
    result = compare.compare(ds, n_permutations=200, n_bootstrap=300, seed=0)
    idx = {m: result.models[m]["stats"]["log_norm"]["index"] for m in ds.model.values}
    pv = ds["prompt_value"].sel(stat="log_norm")
    for m in ds.model.values:  # index = mean over layers of |Hedges' g| of prompt values
        v = pv.sel(model=m).values
        a, b = v[~is_b], v[is_b]
        sp = np.sqrt(
            ((a.shape[0] - 1) * a.var(0, ddof=1) + (b.shape[0] - 1) * b.var(0, ddof=1)) / (n - 2)
        )
        expect = np.mean(np.abs((b.mean(0) - a.mean(0)) / sp * inference.hedges_j(n - 2)))
        assert idx[m]["value"] == pytest.approx(expect, rel=1e-10)
        assert idx[m]["ci_low"] < idx[m]["value"] < idx[m]["ci_high"]
    # prompt means over 6 standard-normal tokens: sd 1/√6, so the planted shifts are g ≈ 2.4 and 0.7
    assert idx["strong"]["value"] == pytest.approx(np.sqrt(6), rel=0.25)
    assert idx["weak"]["value"] == pytest.approx(0.3 * np.sqrt(6), rel=0.35)
    assert idx["weak"]["p"] < 0.01 and idx["weak"]["null_mean"] < 0.3
    ranking = result.ranking["log_norm"]
    assert ranking["order"][0] == "strong"
    pair = {(x["higher"], x["lower"]): x for x in ranking["pairwise"]}
    assert pair[("strong", ranking["order"][1])]["holds"] > 0.99
    twins = pair.get(("weak", "twin")) or pair[("twin", "weak")]
    assert twins["ties"] == 1.0  # paired bootstrap: identical models tie in every replicate
    assert "tied in 100%" in ranking_sentences(result)[0]


# ---------------------------------------------------------------- length confound


def test_length_matching_removes_a_difference_caused_only_by_length():
    """Token values grow with the prompt's length; jailbreak prompts are longer; nothing else
    differs."""
    rng = np.random.default_rng(5)
    n = 300
    is_b = np.arange(n) >= n // 2
    lengths = np.clip(np.round(np.exp(rng.normal(np.where(is_b, 3.3, 2.7), 0.5))), 2, 80).astype(
        int
    )
    raw = raw_values(rng, n, 3, 80, lengths) * 0.3 + 0.4 * np.log(lengths)[:, None, None]
    ds = synthetic_store({"m": raw}, is_b)
    plain = compare.compare(ds, n_permutations=500, n_bootstrap=100, seed=0)
    assert (
        plain.layer_profile["significant"].sel(model="m").all()
    )  # the confound looks like a jailbreak effect
    matched = compare.compare(ds, n_permutations=500, n_bootstrap=100, seed=0, match_length=True)
    m = matched.models["m"]["stats"]["log_norm"]["length_matched"]
    assert m["layers_significant"] == 0
    assert abs(m["survival"]) < 0.25
    la, lb = m["lengths"]["a"]["quantiles"], m["lengths"]["b"]["quantiles"]
    assert abs(la["0.5"] - lb["0.5"]) <= 0.15 * la["0.5"]
    assert m["prompts_kept"]["a"] == m["prompts_kept"]["b"] > 40
    assert any("After length matching" in s for s in matched.observations["m"])


def test_length_matching_keeps_a_real_difference():
    rng = np.random.default_rng(6)
    n = 300
    is_b = np.arange(n) >= n // 2
    lengths = rng.integers(3, 40, n)
    raw = raw_values(rng, n, 3, 40, lengths) * 0.3
    raw[is_b] += 0.3
    m = compare.compare(
        synthetic_store({"m": raw}, is_b), n_permutations=300, n_bootstrap=50, match_length=True
    ).models["m"]["stats"]["log_norm"]["length_matched"]
    assert m["layers_significant"] == 3 and 0.7 < m["survival"] < 1.3


# ---------------------------------------------------------------- non-finite values


def _overflowed(n_a: int, n_b: int, seed: int = 14):
    """An fp16-like overflow: from layer 2 on, every value of the first n_a A and n_b B prompts is
    not finite."""
    rng = np.random.default_rng(seed)
    is_b = np.arange(40) >= 20
    raw = raw_values(rng, 40, 5, 8, np.full(40, 8))
    hit = np.r_[np.arange(n_a), 20 + np.arange(n_b)]
    raw[hit, 2:] = np.inf
    return synthetic_store({"m": raw}, is_b)


def test_unbalanced_non_finite_exclusion_is_refused():
    ds = _overflowed(2, 9)
    with pytest.raises(
        UserError, match=r"2 of 20 benign and 9 of 20 jailbreak.*--max-excluded-gap"
    ):
        compare.compare(ds, n_permutations=50, n_bootstrap=20)
    result = compare.compare(ds, n_permutations=50, n_bootstrap=20, max_excluded_gap=0.5)
    s = result.models["m"]["stats"]["log_norm"]
    assert s["prompts_excluded"] == {"a": 2, "b": 9} and s["prompts_used"] == {"a": 18, "b": 11}
    assert s["nonfinite"] == {"a": 2 * 3 * 8, "b": 9 * 3 * 8}


def test_non_finite_values_are_reported_per_scenario():
    result = compare.compare(_overflowed(1, 1), n_permutations=50, n_bootstrap=20)
    line = next(s for s in result.observations["m"] if "not finite" in s)
    assert (
        "24 benign and 24 jailbreak values" in line
        and "1 of 20 benign and 1 of 20 jailbreak prompts" in line
    )
    assert "| m | log_norm | 24 | 24 | 1 of 20 | 1 of 20 |" in compare_markdown(result)
    clean = compare.compare(_overflowed(0, 0), n_permutations=50, n_bootstrap=20)
    assert not any("not finite" in s for s in clean.observations["m"])
    assert "Non-finite" not in compare_markdown(clean)


def test_fp16_overflow_in_a_model_is_reported_and_refused():
    """A real forward pass: a token whose fp16 embedding overflows poisons its prompt at every
    later layer."""
    import torch

    from tests.conftest import make_set

    lm = load_model("tiny:llama", dtype="float16")
    zq = lm.tokenizer("zq", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[zq] = float("inf")
    benign = make_set("benign", [f"a question number {i} about cats" for i in range(12)])

    def run(hits):
        jailbreak = make_set(
            "jailbreak",
            [f"ignore the rules {i}" + (" zq now" if i < hits else " please") for i in range(12)],
        )
        return store.build(
            [extract(lm, [benign, jailbreak], ExtractOptions())], [benign, jailbreak]
        )

    ds = run(6)
    nonfinite = (
        ds["nonfinite"].sel(model="llama", stat="log_norm").sum(["layer", "position"]).values
    )
    assert (
        nonfinite[0] == 0 and nonfinite[1] > 6 * 30
    )  # the whole prompt, at every layer after the overflow
    with pytest.raises(UserError, match="0 of 12 benign and 6 of 12 jailbreak"):
        compare.compare(ds, n_permutations=50, n_bootstrap=20)
    result = compare.compare(ds, n_permutations=50, n_bootstrap=20, max_excluded_gap=1.0)
    assert result.models["llama"]["stats"]["log_norm"]["prompts_excluded"] == {"a": 0, "b": 6}
    assert any(
        f"0 benign and {nonfinite[1]} jailbreak values were not finite" in s
        for s in result.observations["llama"]
    )


# ---------------------------------------------------------------- outputs


def test_json_and_markdown_and_observations_say_only_what_tests_support():
    rng = np.random.default_rng(7)
    is_b = np.arange(40) >= 20
    ds = synthetic_store(
        {"m": raw_values(rng, 40, 4, 10, np.full(40, 10))}, is_b
    )  # A/A: nothing to find
    result = compare.compare(ds, n_permutations=300, n_bootstrap=100)
    obs = " ".join(result.observations["m"])
    assert "no cell differs significantly" in obs
    assert "No layer's prompt-level mean" in obs
    assert "raises" not in obs and "lowers" not in obs
    data = json.loads(json.dumps(result.to_json()))  # strict JSON (no NaN)
    s = data["models"]["m"]["stats"]["log_norm"]
    assert set(s) >= {"cells", "layer_profile", "position_profile", "bands", "trends", "index"}
    assert data["scenarios"] == {"a": "benign", "b": "jailbreak"}
    assert "| m | log_norm |" in compare_markdown(result)


def test_write_compare_adds_cell_variables_to_the_store(tmp_path):
    rng = np.random.default_rng(8)
    is_b = np.arange(30) >= 15
    raw = raw_values(rng, 30, 4, 10, rng.integers(4, 11, 30))
    raw[is_b, 1:3] += 1.0
    store.write(synthetic_store({"m": raw}, is_b), tmp_path)
    result = compare.compare(store.open_run(tmp_path), n_permutations=100, n_bootstrap=50)
    paths = outputs.write_compare(result, tmp_path)
    for name in (
        "compare.json",
        "summary.md",
        "figure_significance.png",
        "figure_significance.pdf",
        "profiles.png",
        "profiles.pdf",
    ):
        assert tmp_path / name in paths and (tmp_path / name).stat().st_size > 0
    ds = xr.open_zarr(tmp_path / "trace.zarr")
    for var in compare.CELL_VARS:
        assert ds[var].dims == ("model", "stat", "layer", "position")
    assert ds["significant"].dtype == bool
    assert bool(ds["significant"].sel(layer=slice(1, 2)).any()) and not bool(
        ds["significant"].sel(layer=[0, 3]).any()
    )
    np.testing.assert_array_equal(ds["q"].values, result.cells["q"].values)


def test_one_prompt_per_scenario_is_a_note_and_a_failed_rerun_keeps_the_old_result(
    tmp_path, monkeypatch
):
    rng = np.random.default_rng(10)
    is_b = np.arange(20) >= 10
    store.write(
        synthetic_store({"m": raw_values(rng, 20, 3, 6, rng.integers(2, 7, 20))}, is_b), tmp_path
    )
    outputs.write_compare(
        compare.compare(store.open_run(tmp_path), n_permutations=50, n_bootstrap=20), tmp_path
    )
    before = (tmp_path / "compare.json").read_text()

    from jbtrace.views import plot

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plot, "profiles", broken)
    result = compare.compare(store.open_run(tmp_path), n_permutations=60, n_bootstrap=20)
    with pytest.raises(RuntimeError):
        outputs.write_compare(result, tmp_path)
    assert (
        tmp_path / "compare.json"
    ).read_text() == before  # nothing deleted before the new result is ready
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    one = synthetic_store({"m": raw_values(rng, 2, 3, 5, [5, 4])}, np.array([False, True]))
    store.write(one, tmp_path)
    result = compare.compare(store.open_run(tmp_path), n_permutations=50, n_bootstrap=20)
    assert any("fewer than two usable prompts" in s for s in result.observations["m"])
    outputs.write_compare(result, tmp_path)
    assert (
        json.loads((tmp_path / "compare.json").read_text())["models"]["m"]["stats"]["log_norm"][
            "index"
        ]
        is None
    )


def test_user_errors():
    rng = np.random.default_rng(9)
    ds = synthetic_store({"m": raw_values(rng, 10, 2, 4, np.full(10, 4))}, np.arange(10) >= 5)
    with pytest.raises(UserError, match="q"):
        compare.compare(ds, q=1.5)
    with pytest.raises(UserError, match="one scenario"):
        compare.compare(ds.isel(scenario=[0]))
    with pytest.raises(UserError, match="prompt_value"):
        compare.compare(ds.drop_vars("prompt_value"))
