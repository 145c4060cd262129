"""Words and data from a comparison: observations (sentences per model) and compare.json.

Every sentence carries its number and its uncertainty, and says only what a test in
``compare`` supports; where nothing is significant, it says so.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np

import jbtrace

MAX_BANDS = 3


def number(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, or ``n/a``."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def p_value(x: float | None) -> str:
    """A p- or q-value: two significant digits, ``< 0.001``, or ``n/a``."""
    return "n/a" if x is None else (f"{x:.2g}" if x >= 0.001 else "< 0.001")


def _eq(name: str, x: float | None, op: str = "=") -> str:
    """``p = 0.04`` or ``p < 0.001``."""
    return f"{name} < 0.001" if x is not None and x < 0.001 else f"{name} {op} {p_value(x)}"


def _layers(span: list[int]) -> str:
    return f"layer {span[0]}" if span[0] == span[1] else f"layers {span[0]}–{span[1]}"


def _cells_sentence(stat: str, c: dict, q: float, b: str, min_count: int) -> str:
    left_out = c["one_scenario_only"] + c["below_min_count"]
    tail = (
        f"; {left_out} cells left out (fewer than {min_count} prompts in a scenario)"
        if left_out
        else ""
    )
    tail += f"; {c['constant']} cells constant across prompts (not tested)" if c["constant"] else ""
    if not c["tested"]:
        return f"{stat}: no cell has enough prompts in both scenarios to test{tail}."
    if not c["significant"]:
        return (
            f"{stat}: no cell differs significantly at q={q} ({c['tested']} cells tested, "
            f"smallest q = {p_value(c['min_q'])}){tail}."
        )
    return (
        f"{stat}: {c['significant']} of {c['tested']} tested cells ({c['significant_share']:.0%}) "
        f"differ at q={q} ({c['significant_positive']} higher, {c['significant_negative']} lower "
        f"under {b}; mean |g| over tested cells {number(c['mean_abs_g'], 2)}){tail}."
    )


def _band_sentences(stat: str, s: dict, q: float, b: str, n_perm: int) -> list[str]:
    bands = s["bands"]
    if not bands:
        return [
            f"No layer's prompt-level mean of {stat} differs significantly ({n_perm} label "
            "permutations per layer, "
            f"BH over layers at q={q})."
        ]
    top = sorted(
        bands, key=lambda x: -(abs(x["mean_diff"]) * (x["layers"][1] - x["layers"][0] + 1))
    )[:MAX_BANDS]
    out = []
    for band in sorted(top, key=lambda x: x["layers"][0]):
        verb = "raises" if band["sign"] > 0 else "lowers"
        share = band["cells_significant_share"]
        cells = (
            f"; {share:.0%} of the cells in these layers significant" if share is not None else ""
        )
        out.append(
            f"{b} {verb} {stat} in {_layers(band['layers'])} (mean Δ {band['mean_diff']:+.3g}, "
            f"95% CI [{number(band['ci_low'])}, {number(band['ci_high'])}]; permutation "
            f"{_eq('q', band['max_q'], '≤')}{cells})."
        )
    if len(bands) > MAX_BANDS:
        out.append(
            f"{len(bands) - MAX_BANDS} further, smaller significant layer bands are listed in "
            "compare.json."
        )
    return out


def _trend_sentences(stat: str, s: dict, q: float) -> list[str]:
    if s.get("trend_note"):
        return [f"Position trends of {stat} not tested: {s['trend_note']}."]
    none, out = [], []
    for t in s["trends"]:
        n = t["n_prompts"]
        if t["p"] is None:
            none.append(
                f"{_layers(t['layers'])}: not testable ({n['a']}+{n['b']} prompts with a slope)"
            )
            continue
        ci = f"95% CI [{100 * t['ci_low']:.3g}, {100 * t['ci_high']:.3g}]"
        if t["trend"]:
            direction = "increases" if t["diff"] > 0 else "decreases"
            out.append(
                f"In {_layers(t['layers'])} B − A of {stat} {direction} with position (difference "
                "of per-prompt "
                f"slopes {100 * t['diff']:+.3g} per 100 positions, {ci}; {n['a']}+{n['b']} "
                f"length-matched prompts, Welch-t permutation {_eq('q', t['q'])})."
            )
        else:
            none.append(
                f"{_layers(t['layers'])} (Δ slope {100 * t['diff']:+.3g} per 100 positions, {ci}; "
                f"{_eq('q', t['q'])})"
            )
    if none:
        out.append(
            f"No detectable position trend of {stat} (per-prompt slopes of length-matched prompts, "
            "Welch-t "
            "permutation test over prompts) in " + "; ".join(none) + "."
        )
    return out


def _nonfinite_sentence(stat: str, s: dict, a: str, b: str) -> list[str]:
    nf, ex = s["nonfinite"], s["prompts_excluded"]
    if not (nf["a"] or nf["b"] or ex["a"] or ex["b"]):
        return []
    used = s["prompts_used"]
    return [
        f"{stat}: {nf['a']} {a} and {nf['b']} {b} values were not finite (e.g. fp16 overflow) and "
        "left out of the cells; "
        f"{ex['a']} of {ex['a'] + used['a']} {a} and {ex['b']} of {ex['b'] + used['b']} {b} "
        "prompts are excluded from "
        f"the prompt-level tests."
    ]


def _index_sentence(stat: str, idx: dict) -> str:
    return (
        f"Sensitivity index for {stat} (mean |g| of prompt-level values over layers) "
        f"{idx['value']:.2f}, 95% CI "
        f"[{idx['ci_low']:.2f}, {idx['ci_high']:.2f}]; chance level {idx['null_mean']:.2f} "
        f"(permutation {_eq('p', idx['p'])})."
    )


def _length_sentences(entry: dict, a: str, b: str) -> list[str]:
    la, lb = entry["lengths"][a]["quantiles"], entry["lengths"][b]["quantiles"]
    if not la or not lb:
        return []
    out = [
        f"Prompt lengths (tokens): {a} median {la['0.5']:.0f} (IQR "
        f"{la['0.25']:.0f}–{la['0.75']:.0f}), "
        f"{b} median {lb['0.5']:.0f} (IQR {lb['0.25']:.0f}–{lb['0.75']:.0f})."
    ]
    for stat, s in entry["stats"].items():
        m = s.get("length_matched")
        if not m:
            continue
        kept = m["prompts_kept"]
        if m["survival"] is None:
            out.append(
                f"Length matching kept {kept['a']}+{kept['b']} prompts: "
                f"{m.get('note', 'no difference to compare')}."
            )
            continue
        out.append(
            f"After length matching ({kept['a']} {a} + {kept['b']} {b} prompts kept), "
            f"{m['survival']:.0%} of the "
            f"layer-profile difference in {stat} survives; {m['layers_significant']} of "
            f"{len(m['layers'])} layers "
            f"still significant (permutation, BH)."
        )
    return out


def observations(result) -> dict[str, list[str]]:
    """A few sentences per model, each with its number and uncertainty."""
    a, b = result.scenarios
    q, n_perm, min_count = (
        result.params["q"],
        result.params["n_permutations"],
        result.params["min_count"],
    )
    out = {}
    for model, entry in result.models.items():
        lines = []
        for stat, s in entry["stats"].items():
            lines.append(_cells_sentence(stat, s["cells"], q, b, min_count))
            lines += _nonfinite_sentence(stat, s, a, b)
            if s.get("index") is None:
                lines.append(
                    f"{stat}: {s.get('note', 'no prompt-level values')}; no prompt-level tests."
                )
                continue
            lines += _band_sentences(stat, s, q, b, n_perm)
            lines += _trend_sentences(stat, s, q)
            lines.append(_index_sentence(stat, s["index"]))
        lines += _length_sentences(entry, a, b)
        if entry.get("random_init"):
            lines.append(
                "Random-init stand-in: these differences come from the prompts' tokens passing "
                "through random weights, not from learned behaviour."
            )
        out[model] = lines
    return out


def _holds(x: dict) -> str:
    """How often one model stays above the next in the bootstrap (or how often they tie)."""
    hi, lo = x["higher"], x["lower"]
    return (
        f"{hi} and {lo} tied in {x['ties']:.0%}"
        if x["ties"] > 0.5
        else f"{hi} > {lo} in {x['holds']:.0%}"
    )


def ranking_sentences(result) -> list[str]:
    """One sentence per statistic ranking the models by sensitivity index, with its stability."""
    out = []
    n_boot = result.params["n_bootstrap"]
    for stat, r in result.ranking.items():
        if len(r["order"]) < 2:
            continue
        ci = {m: result.models[m]["stats"][stat]["index"] for m in r["order"]}
        chain = " > ".join(
            f"{m} {ci[m]['value']:.2f} [{ci[m]['ci_low']:.2f}, {ci[m]['ci_high']:.2f}]"
            for m in r["order"]
        )
        adjacent = {(x["higher"], x["lower"]): x for x in r["pairwise"]}
        holds = ", ".join(_holds(adjacent[pair]) for pair in pairwise(r["order"]))
        out.append(
            f"Ranking by {stat} sensitivity index: {chain}; the order holds in {n_boot} paired "
            f"bootstrap replicates over prompts as: {holds}."
        )
    return out


# ---------------------------------------------------------------- compare.json


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _rows(ds, dim: str, names: tuple[str, ...]) -> list[dict]:
    keep = np.isfinite(ds["diff"].values)
    return [
        {dim: int(v), **{k: ds[k].values[i].item() for k in names}}
        for i, v in enumerate(ds[dim].values)
        if keep[i]
    ]


def to_json(result) -> dict:
    """The machine-readable comparison; keys are documented in the README (section Compare)."""
    a, b = result.scenarios
    models = {}
    for model, entry in result.models.items():
        stats = {}
        for stat, s in entry["stats"].items():
            rows = dict(s)
            if s.get("index") is not None:
                lp = result.layer_profile.sel(model=model, stat=stat)
                rows["layer_profile"] = _rows(
                    lp, "layer", ("diff", "ci_low", "ci_high", "g", "p", "q", "significant")
                )
            pp = result.position_profile.sel(model=model, stat=stat)
            rows["position_profile"] = _rows(pp, "position", ("diff", "ci_low", "ci_high", "p"))
            stats[stat] = rows
        models[model] = {
            **{k: v for k, v in entry.items() if k != "stats"},
            "stats": stats,
            "observations": result.observations.get(model, []),
        }
    return _clean(
        {
            "jbtrace_version": jbtrace.__version__,
            "scenarios": {"a": a, "b": b},
            "difference": f"{b} - {a}",
            "params": result.params,
            "models": models,
            "ranking": result.ranking,
            "ranking_observations": ranking_sentences(result),
        }
    )
