"""summary.md: the tables and observations of a comparison (``analysis.compare.CompareResult``)."""

from __future__ import annotations

from jbtrace.analysis.observe import number, p_value, ranking_sentences

QUANTILES = ("0.1", "0.25", "0.5", "0.75", "0.9", "1")


def _stats(result):
    """(model, stat, summary) for every model and statistic of the comparison."""
    return [
        (model, stat, s)
        for model, entry in result.models.items()
        for stat, s in entry["stats"].items()
    ]


def _preamble(result) -> list[str]:
    a, b = result.scenarios
    p = result.params
    return [
        f"# Compare: {b} − {a}",
        "",
        f"q = {p['q']} (Benjamini–Hochberg per model and statistic), min count {p['min_count']}, "
        f"{p['n_permutations']} permutations, {p['n_bootstrap']} bootstrap replicates, "
        f"seed {p['seed']}"
        + (", length-matched layer profiles" if p["match_length"] else "")
        + "; refused when non-finite values exclude shares of prompts more than "
        f"{p['max_excluded_gap']:.0%} apart.",
        "",
    ]


def _cells(result) -> list[str]:
    lines = [
        "## Cells",
        "",
        "| model | stat | tested | significant | share | + | − | left out | constant "
        "| mean abs g |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, stat, s in _stats(result):
        c = s["cells"]
        share = "n/a" if c["significant_share"] is None else f"{c['significant_share']:.1%}"
        lines.append(
            f"| {model} | {stat} | {c['tested']} | {c['significant']} | {share} "
            f"| {c['significant_positive']} | {c['significant_negative']} "
            f"| {c['one_scenario_only'] + c['below_min_count']} | {c['constant']} "
            f"| {number(c['mean_abs_g'], 2)} |"
        )
    return lines


def _bands(result) -> list[str]:
    lines = [
        "",
        "## Significant layer bands (prompt-level permutation test)",
        "",
        "| model | stat | layers | mean Δ | 95% CI | max q | cells significant |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, stat, s in _stats(result):
        for band in s.get("bands", []):
            share = band["cells_significant_share"]
            share = "n/a" if share is None else f"{share:.0%}"
            lines.append(
                f"| {model} | {stat} | {band['layers'][0]}–{band['layers'][1]} "
                f"| {band['mean_diff']:+.3g} | [{number(band['ci_low'])}, "
                f"{number(band['ci_high'])}] | {p_value(band['max_q'])} | {share} |"
            )
    return lines


def _trends(result) -> list[str]:
    lines = [
        "",
        "## Position trends (difference of per-prompt slopes, length-matched prompts, "
        "Welch-t permutation)",
        "",
        "| model | stat | layers | prompts | B − A per 100 positions | 95% CI | p | q | trend |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, stat, s in _stats(result):
        for t in s.get("trends", []):
            if t["p"] is None:
                continue
            lines.append(
                f"| {model} | {stat} | {t['layers'][0]}–{t['layers'][1]} "
                f"| {t['n_prompts']['a']}+{t['n_prompts']['b']} | {100 * t['diff']:+.3g} "
                f"| [{100 * t['ci_low']:.3g}, {100 * t['ci_high']:.3g}] | {p_value(t['p'])} "
                f"| {p_value(t['q'])} | {'yes' if t['trend'] else 'no'} |"
            )
    return lines


def _nonfinite(result) -> list[str]:
    a, b = result.scenarios
    found = [
        (model, stat, s)
        for model, stat, s in _stats(result)
        if any(s["nonfinite"].values()) or any(s["prompts_excluded"].values())
    ]
    if not found:
        return []
    lines = [
        "",
        "## Non-finite values",
        "",
        f"| model | stat | values {a} | values {b} | prompts excluded {a} | prompts excluded {b} |",
        "|---|---|---|---|---|---|",
    ]
    for model, stat, s in found:
        nf, ex, used = s["nonfinite"], s["prompts_excluded"], s["prompts_used"]
        lines.append(
            f"| {model} | {stat} | {nf['a']} | {nf['b']} | {ex['a']} of {ex['a'] + used['a']} | "
            f"{ex['b']} of {ex['b'] + used['b']} |"
        )
    return lines


def _index(result) -> list[str]:
    lines = [
        "",
        "## Sensitivity index (mean |g| over layers, prompt level)",
        "",
        "| model | stat | index | 95% CI | chance | p |",
        "|---|---|---|---|---|---|",
    ]
    for model, stat, s in _stats(result):
        if s.get("index"):
            i = s["index"]
            lines.append(
                f"| {model} | {stat} | {i['value']:.3f} | [{i['ci_low']:.3f}, "
                f"{i['ci_high']:.3f}] | {i['null_mean']:.3f} | {p_value(i['p'])} |"
            )
    ranking = ranking_sentences(result)
    return lines + (["", "## Ranking", "", *ranking] if ranking else [])


def _lengths(result) -> list[str]:
    lines = [
        "",
        "## Prompt lengths (tokens)",
        "",
        "| model | scenario | n | 10% | 25% | median | 75% | 90% | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in result.models.items():
        for scenario, d in entry["lengths"].items():
            qs = d["quantiles"]
            if qs:
                lines.append(
                    f"| {model} | {scenario} | {d['n']} | "
                    + " | ".join(f"{qs[k]:.0f}" for k in QUANTILES)
                    + " |"
                )
    return lines


def compare_markdown(result) -> str:
    """summary.md: tables and observations, for people."""
    lines = _preamble(result) + _cells(result) + _bands(result) + _trends(result)
    lines += _nonfinite(result) + _index(result) + _lengths(result)
    lines += ["", "## Observations", ""]
    for model, sentences in result.observations.items():
        lines += [f"### {result.models[model]['label']}", "", *[f"- {s}" for s in sentences], ""]
    return "\n".join(lines) + "\n"
