"""judges.md: each verdict's agreement with people's labels, with intervals, as markdown."""

from __future__ import annotations

TARGETS = {  # the targets of issue #22, and on which labelled set each is read
    ("refusal", "refusal"): {"kappa": 0.80, "accuracy": 0.90},
    ("complied", "refusal"): {"kappa": 0.80, "accuracy": 0.90},
    ("complied", "objective"): {"precision": 0.85, "recall": 0.85},
}


def _cell(value, ci) -> str:
    if value is None:
        return "–"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.2f}–{ci[1]:.2f})"


def targets(verdicts: dict) -> list[dict]:
    """Each target: the measured value, and whether it is met."""
    out = []
    for (name, dataset), wanted in TARGETS.items():
        found = verdicts.get(name, {}).get(dataset)
        if found is None:
            continue
        for metric, goal in wanted.items():
            value = found[metric]
            met = value is not None and value >= goal
            out.append(
                {
                    "verdict": name,
                    "data": dataset,
                    "metric": metric,
                    "target": goal,
                    "value": value,
                    "met": met,
                }
            )
    return out


def judges_markdown(result: dict) -> str:
    """The agreement table per verdict and labelled set, the targets, and the confusion per
    category of the default verdict."""
    lines = [
        "# Judges against people's labels",
        "",
        f"Default verdict: **{result['default']}**. Complied is the positive class; intervals "
        "are 95% percentile bootstraps over clusters of rows sharing a text; the on-topic "
        "threshold is fitted out of fold across harm categories.",
        "",
        "| verdict | data | n | accuracy | κ | precision | recall | specificity |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for name, by_data in result["verdicts"].items():
        for dataset, m in by_data.items():
            cells = [
                _cell(m[k], m["ci"][k])
                for k in ("accuracy", "kappa", "precision", "recall", "specificity")
            ]
            lines.append(f"| {name} | {dataset} | {m['n']} | " + " | ".join(cells) + " |")
    met = targets(result["verdicts"])
    if met:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for t in met:
            lines.append(
                f"| {t['verdict']} {t['metric']} ≥ {t['target']} on {t['data']} | "
                f"{_cell(t['value'], None)} | {'yes' if t['met'] else 'no'} |"
            )
    for dataset, check in result.get("correction_check", {}).items():
        lines += [
            "",
            f"Rogan–Gladen check on {dataset}: per category, the share people call complied, "
            f"the **{result['default']}** verdict's share, and that share corrected with the "
            "sensitivity and specificity measured on the other categories.",
            "",
            "| category | n | people | verdict | corrected |",
            "|---|---:|---|---|---|",
        ]
        for r in check["categories"]:
            fixed = "–" if r["corrected"] is None else f"{r['corrected']:.3f}"
            lines.append(
                f"| {r['category']} | {r['n']} | {r['people']:.3f} | {r['verdict']:.3f} | {fixed} |"
            )
        if check["mean_abs_error_verdict"] is not None:
            lines += [
                "",
                f"Mean absolute error against people: verdict "
                f"{check['mean_abs_error_verdict']:.3f}, corrected "
                f"{check['mean_abs_error_corrected']:.3f}.",
            ]
    default = result["verdicts"][result["default"]]
    for dataset, m in default.items():
        lines += [
            "",
            f"Confusion of **{result['default']}** on {dataset}, per category:",
            "",
            "| category | tp | fp | fn | tn |",
            "|---|---:|---:|---:|---:|",
        ]
        for cat, c in m["by_category"].items():
            lines.append(f"| {cat} | {c['tp']} | {c['fp']} | {c['fn']} | {c['tn']} |")
    return "\n".join(lines) + "\n"
