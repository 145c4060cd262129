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

from jbtrace.analysis import compare
from jbtrace.analysis.observe import ranking_sentences
from jbtrace.models import load_model
from jbtrace.trace import store
from jbtrace.trace.extract import ExtractOptions, extract
from jbtrace.views import outputs


def synthetic_store(models: dict[str, np.ndarray], is_b: np.ndarray, names=("benign", "jailbreak")) -> xr.Dataset:
    """A store from raw values (prompt, layer, position) per model; NaN marks positions a prompt does not reach."""
    n_models, (n_prompts, n_layers, n_pos) = len(models), next(iter(models.values())).shape
    shape = (n_models, 2, 1, n_layers, n_pos)
    mean, var, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, np.int64)
    prompt_value = np.full((n_models, 1, n_prompts, n_layers), np.nan)
    tokens = np.zeros((n_models, n_prompts), np.int64)
    for m, raw in enumerate(models.values()):
        for s, rows in enumerate((~is_b, is_b)):
            x = raw[rows]
            count[m, s, 0] = np.isfinite(x).sum(0)
            with _quiet():
                mean[m, s, 0] = np.nanmean(x, 0)
                var[m, s, 0] = np.nanvar(x, 0, ddof=1)
        with _quiet():
            prompt_value[m, 0] = np.nanmean(raw, 2)
        tokens[m] = np.isfinite(raw[:, 0]).sum(1)
    var[count < 2] = np.nan
    dims = ("model", "scenario", "stat", "layer", "position")
    return xr.Dataset(
        {"mean": (dims, mean), "var": (dims, var), "count": (dims, count), "nonfinite": (dims, np.zeros(shape, np.int64)),
         "prompt_value": (("model", "stat", "prompt", "layer"), prompt_value),
         "prompt_tokens": (("model", "prompt"), tokens)},
        coords={"model": list(models), "scenario": list(names), "stat": ["log_norm"], "layer": np.arange(n_layers),
                "position": np.arange(n_pos), "prompt": np.arange(n_prompts),
                "prompt_scenario": ("prompt", np.where(is_b, names[1], names[0])),
                "model_label": ("model", list(models)), "random_init": ("model", [False] * n_models)},
        attrs={"align": "start"},
    )


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
    """Extract with jbtrace, then recompute every cell from output_hidden_states with scipy's Welch test."""
    import torch

    lm = load_model("tiny:gptj", dtype="float64")  # float64: batching noise must not blur the comparison
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
                assert int(cell["status"]) in (2, 3) and np.isnan(float(cell["diff"])) and not bool(cell["significant"])
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
            j = math.gamma(df / 2) / (math.sqrt(df / 2) * math.gamma((df - 1) / 2))  # Hedges' exact correction
            assert float(cell["g"]) == pytest.approx((np.mean(b) - np.mean(a)) / sp * j, rel=1e-7, abs=1e-10)
            checked += 1
    assert checked > 100
    tested = cells["status"].values == 0
    expected = multipletests(cells["p"].values[tested], method="fdr_bh")[1]
    np.testing.assert_allclose(cells["q"].values[tested], expected, rtol=1e-12)


def test_bh_matches_statsmodels():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-3, size=40), [0.5, 0.5, 0.5], [np.nan] * 7])
    rng.shuffle(p)
    q = compare.bh(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(q[finite], multipletests(p[finite], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(q[~finite]).all()
    assert np.isnan(compare.bh(np.full(4, np.nan))).all()


def test_hedges_j_exact():
    from math import gamma, sqrt

    for df in (2, 5, 17, 60):
        assert compare.hedges_j(df) == pytest.approx(gamma(df / 2) / (sqrt(df / 2) * gamma((df - 1) / 2)), rel=1e-12)


# ---------------------------------------------------------------- prompt-level tests, cells of one scenario


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
        ref = sps.permutation_test((b, a), lambda x, y: x.mean() - y.mean(), n_resamples=3000,
                                   alternative="two-sided", random_state=2).pvalue
        assert float(lp["p"].sel(layer=layer)) == pytest.approx(ref, abs=0.03)
        half = 1.96 * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        width = float(lp["ci_high"].sel(layer=layer) - lp["ci_low"].sel(layer=layer))
        assert width == pytest.approx(2 * half, rel=0.3)  # bootstrap CI ≈ normal CI
    assert list(np.flatnonzero(lp["significant"].values)) == [2]
    bands = result.models["m"]["stats"]["log_norm"]["bands"]
    assert [b["layers"] for b in bands] == [[2, 2]] and bands[0]["sign"] == 1
    assert bands[0]["ci_low"] < bands[0]["mean_diff"] < bands[0]["ci_high"]


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


def test_position_trend_found_with_right_sign_and_matches_scipy():
    result = compare.compare(_trend_store(0.01, 0), n_permutations=500, n_bootstrap=50)
    trends = result.models["m"]["stats"]["log_norm"]["trends"]
    assert all(t["trend"] and t["slope"] > 0 and t["rho"] > 0 for t in trends)
    for t in trends:
        lo, hi = t["slope_ci"]
        assert lo < 0.01 < hi and t["slope"] == pytest.approx(0.01, rel=0.25)
        prof = compare._position_profile(result.cells.sel(model="m", stat="log_norm", layer=slice(*t["layers"])))
        d = prof["diff"].values
        assert t["rho"] == pytest.approx(sps.spearmanr(np.arange(d.size), d).statistic, abs=1e-12)
    assert any("increases with position" in s for s in result.observations["m"])


def test_no_position_trend_reported_without_one():
    result = compare.compare(_trend_store(0.0, 1), n_permutations=500, n_bootstrap=50)
    assert not any(t["trend"] for t in result.models["m"]["stats"]["log_norm"]["trends"])
    assert any(s.startswith("No detectable position trend") for s in result.observations["m"])


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
        sp = np.sqrt(((a.shape[0] - 1) * a.var(0, ddof=1) + (b.shape[0] - 1) * b.var(0, ddof=1)) / (n - 2))
        expect = np.mean(np.abs((b.mean(0) - a.mean(0)) / sp * compare.hedges_j(n - 2)))
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
    """Token values grow with the prompt's length; jailbreak prompts are longer; nothing else differs."""
    rng = np.random.default_rng(5)
    n = 300
    is_b = np.arange(n) >= n // 2
    lengths = np.clip(np.round(np.exp(rng.normal(np.where(is_b, 3.3, 2.7), 0.5))), 2, 80).astype(int)
    raw = raw_values(rng, n, 3, 80, lengths) * 0.3 + 0.4 * np.log(lengths)[:, None, None]
    ds = synthetic_store({"m": raw}, is_b)
    plain = compare.compare(ds, n_permutations=500, n_bootstrap=100, seed=0)
    assert plain.layer_profile["significant"].sel(model="m").all()  # the confound looks like a jailbreak effect
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
    m = compare.compare(synthetic_store({"m": raw}, is_b), n_permutations=300, n_bootstrap=50,
                        match_length=True).models["m"]["stats"]["log_norm"]["length_matched"]
    assert m["layers_significant"] == 3 and 0.7 < m["survival"] < 1.3


# ---------------------------------------------------------------- outputs


def test_json_and_markdown_and_observations_say_only_what_tests_support():
    rng = np.random.default_rng(7)
    is_b = np.arange(40) >= 20
    ds = synthetic_store({"m": raw_values(rng, 40, 4, 10, np.full(40, 10))}, is_b)  # A/A: nothing to find
    result = compare.compare(ds, n_permutations=300, n_bootstrap=100)
    obs = " ".join(result.observations["m"])
    assert "no cell differs significantly" in obs
    assert "No layer's prompt-level mean" in obs
    assert "raises" not in obs and "lowers" not in obs
    data = json.loads(json.dumps(result.to_json()))  # strict JSON (no NaN)
    s = data["models"]["m"]["stats"]["log_norm"]
    assert set(s) >= {"cells", "layer_profile", "position_profile", "bands", "trends", "index"}
    assert data["scenarios"] == {"a": "benign", "b": "jailbreak"}
    assert "| m | log_norm |" in result.summary_markdown()


def test_write_compare_adds_cell_variables_to_the_store(tmp_path):
    rng = np.random.default_rng(8)
    is_b = np.arange(30) >= 15
    raw = raw_values(rng, 30, 4, 10, rng.integers(4, 11, 30))
    raw[is_b, 1:3] += 1.0
    store.write(synthetic_store({"m": raw}, is_b), tmp_path)
    result = compare.compare(store.open_run(tmp_path), n_permutations=100, n_bootstrap=50)
    paths = outputs.write_compare(result, tmp_path)
    for name in ("compare.json", "summary.md", "figure_significance.png", "figure_significance.pdf", "profiles.png", "profiles.pdf"):
        assert tmp_path / name in paths and (tmp_path / name).stat().st_size > 0
    ds = xr.open_zarr(tmp_path / "trace.zarr")
    for var in compare.CELL_VARS:
        assert ds[var].dims == ("model", "stat", "layer", "position")
    assert ds["significant"].dtype == bool
    assert bool(ds["significant"].sel(layer=slice(1, 2)).any()) and not bool(ds["significant"].sel(layer=[0, 3]).any())
    np.testing.assert_array_equal(ds["q"].values, result.cells["q"].values)


def test_user_errors():
    from jbtrace.errors import UserError

    rng = np.random.default_rng(9)
    ds = synthetic_store({"m": raw_values(rng, 10, 2, 4, np.full(10, 4))}, np.arange(10) >= 5)
    with pytest.raises(UserError, match="q"):
        compare.compare(ds, q=1.5)
    with pytest.raises(UserError, match="one scenario"):
        compare.compare(ds.isel(scenario=[0]))
    with pytest.raises(UserError, match="prompt_value"):
        compare.compare(ds.drop_vars("prompt_value"))
