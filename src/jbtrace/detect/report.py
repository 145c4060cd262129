"""What ``detect`` measured, as dicts and markdown (``views.outputs`` writes them into a run).

Detectors are ranked by their selection score: under ``--protocol cross-source`` the share of
correct decisions on the worst held-out source (TPR on a jailbreak source, 1 − FPR on a
benign one), otherwise the out-of-fold TPR at the target FPR; never by in-distribution F1.
"""

from __future__ import annotations

from jbtrace.detect.evaluate import INTERVAL
from jbtrace.detect.train import DetectOptions, ModelReport

FILES = ("detect.json", "detect.md", "detect.png", "detect.pdf")


def _key(row: dict) -> tuple:
    return (-(row["selection"] if row["selection"] is not None else -1), -row["oof_auroc"])


def ranked(rows: list[dict]) -> list[dict]:
    """Rows best first: selection score, then out-of-fold AUROC."""
    return sorted(rows, key=_key)


def best_per_layer(rows: list[dict], by_feature: bool = False) -> dict:
    """The best-ranked row per (source, layer) [or per (source, layer, feature)]."""
    best = {}
    for row in ranked(rows):
        best.setdefault(
            (row["source"], row["layer"]) + ((row["feature"],) if by_feature else ()), row
        )
    return best


def sensitive_layers(report: dict, top: int = 5) -> list[dict]:
    """Layers ranked by their best detector's selection score, with the length baseline's beside it."""
    length = ranked(report["baseline"])[0]
    length_f1 = max(r["f1"] for r in report["baseline"])
    out = []
    for r in ranked(list(best_per_layer(report["rows"]).values()))[:top]:
        out.append(
            {
                k: r[k]
                for k in (
                    "source",
                    "layer",
                    "feature",
                    "classifier",
                    "selection",
                    "worst_held_out",
                    "f1",
                    "f1_std",
                    "auroc",
                )
            }
            | {
                "length_selection": length["selection"],
                "over_length_baseline": r["f1"] - length_f1,
                "tests": {k: v["rate"] for k, v in r.get("tests", {}).items()},
            }
        )
    return out


def to_dict(report: ModelReport) -> dict:
    out = {
        "name": report.name,
        "label": report.label,
        "spec": report.spec,
        "random_init": report.random_init,
        "seconds": round(report.seconds, 2),
        "plan": report.plan,
        "data": report.data,
        "notes": report.notes,
        "baseline": report.baseline,
        "rows": report.rows,
    }
    out["sensitive_layers"] = sensitive_layers(out)
    return out


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("rate") is None:
        return ""
    return f"{entry['rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in body
    ]


def _name(row: dict) -> str:
    if row["feature"] == "length":
        return f"length only ({row['classifier']})"
    return f"{row['source']} {row['layer']} {row['feature']} ({row['classifier']})"


def _worst(row: dict) -> str:
    w = row.get("worst_held_out")
    return f"{w['source']}: {w['metric']} {w['rate']:.3f}" if w else ""


def _summary_rows(rep: dict) -> list[dict]:
    """The best length-only row, then the best detector of each (source, feature), best first."""
    best = {}
    for row in ranked(rep["rows"]):
        best.setdefault((row["source"], row["feature"]), row)
    return [ranked(rep["baseline"])[0], *best.values()]


def markdown(command: str, options: DetectOptions, reports: list[dict]) -> str:
    target = f"{options.target_fpr:g}"
    lines = [
        "# jbtrace detect",
        "",
        f"`{command}`",
        "",
        f"Protocol `{options.protocol}`: {options.folds}-fold stratified cross-validation grouped by "
        f"near-duplicate cluster (word 5-gram Jaccard ≥ {options.near_duplicate:g}; seed {options.seed})"
        + (
            "; then each prompt source left out in turn (trained on the others, scored on it)"
            if options.protocol == "cross-source"
            else ""
        )
        + ". "
        f"**Operating point**: every F1, accuracy, TPR and FPR is at the threshold that flags {target} of the "
        f"held-out (out-of-fold) benign prompts; for a held-out source that threshold is set without it. "
        f"Intervals are {INTERVAL} for proportions; F1 / accuracy / AUROC are mean ± std over folds. "
        f"Ranking: {'worst held-out source (share of correct decisions)' if options.protocol == 'cross-source' else f'out-of-fold TPR at FPR {target}'}, "
        f"not in-distribution F1. Probabilities are calibrated by a sigmoid fitted on out-of-fold scores "
        f"(Brier score in detect.json)."
        + (" Training prompts are length-matched." if options.match_length else ""),
        "",
    ]
    for rep in reports:
        data = rep["data"]
        tests = list(data.get("test_sets", {})) + [
            n
            for n in (rep["rows"] or rep["baseline"])[0].get("tests", {})
            if n.startswith("split_")
        ]
        lines += [f"## {rep['label']}", ""]
        used = data["lengths_used"]
        lines.append(
            f"Training prompts: {used['benign']['n']} benign (median {used['benign']['median']:.0f} tokens), "
            f"{used['jailbreak']['n']} jailbreak (median {used['jailbreak']['median']:.0f} tokens); "
            f"length KS statistic {used['ks_statistic']:.3f} (p = {used['ks_pvalue']:.2g})."
        )
        if data.get("length_matching"):
            lines.append(f"Length matching: {data['length_matching']}.")
        nd = data["near_duplicates"]
        lines.append(
            f"Near-duplicates: {nd['clusters']} clusters; {nd['prompts_in_shared_clusters']} training prompts "
            f"share a cluster (kept on one side of every fold)."
        )
        for name, info in data.get("test_sets", {}).items():
            lines.append(
                f"Test set `{name}` ({info['source']}, {info['label']}): {info['n']} prompts "
                f"({info['overlap_removed']} exact and {info['near_duplicates_removed']} near-duplicates "
                f"of training prompts removed)."
            )
        plan = rep["plan"]
        lines += [
            f"Plan: {plan['layer_reads']} layer reads in {plan['passes']} pass(es), "
            f"{plan['feature_bytes_per_pass'] / 2**20:.1f} MiB of features per pass, "
            f"CP tensor {plan['cp_tensor_bytes'] / 2**20:.1f} MiB per fit; took {rep['seconds']:.0f} s.",
            "",
        ]
        unconverged = sum(r.get("unconverged_fits", 0) for r in rep["rows"] + rep["baseline"])
        notes = rep["notes"] + (
            [
                f"{unconverged} classifier fits stopped at their iteration limit "
                "(ConvergenceWarning; counted per row in detect.json)"
            ]
            if unconverged
            else []
        )
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])

        summary = _summary_rows(rep)
        points = list(summary[0]["tpr_at_fpr"])
        lines += ["### Best detector per feature, beside the length-only baseline", ""]
        lines += _table(
            [
                "detector",
                "selection",
                "worst held-out",
                f"CV F1 @ FPR {target}",
                "AUROC",
                *(f"TPR @ FPR {p}" for p in points),
                *(
                    f"{n} ({data.get('test_sets', {}).get(n, {}).get('label', n.split('_')[-1])[:1].upper()})"
                    for n in tests
                ),
            ],
            [
                [
                    _name(r),
                    f"{r['selection']:.3f}",
                    _worst(r),
                    f"{r['f1']:.3f} ± {r['f1_std']:.3f}",
                    f"{r['auroc']:.3f}",
                    *(_ci(r["tpr_at_fpr"][p]) for p in points),
                    *(_ci(r.get("tests", {}).get(n)) for n in tests),
                ]
                for r in summary
            ],
        ) + [""]
        held = list(summary[0].get("held_out", {}))
        if held:
            lines += [
                f"### Held-out sources (rate at the threshold for FPR {target} set without the source)",
                "",
            ]
            lines += _table(
                ["detector", *(f"{s} ({summary[0]['held_out'][s]['metric']})" for s in held)],
                [[_name(r), *(_ci(r["held_out"].get(s)) for s in held)] for r in summary],
            ) + [""]
            dropped = {
                s: e["near_duplicates_dropped"]
                for s, e in summary[0]["held_out"].items()
                if e["near_duplicates_dropped"]
            }
            if dropped:
                lines += [
                    "Near-duplicates of training prompts dropped from held-out sources: "
                    + ", ".join(f"{s} {n}" for s, n in dropped.items())
                    + ".",
                    "",
                ]
        lines += [
            "### FPR by prompt length (benign prompts; out-of-fold, held-out sources, test sets)",
            "",
        ]
        body = []
        for r in summary[:2]:
            parts = [("out-of-fold", r.get("fpr_by_length", []))]
            parts += [
                (f"held out {s}", e["fpr_by_length"])
                for s, e in r.get("held_out", {}).items()
                if "fpr_by_length" in e
            ]
            parts += [
                (f"test {n}", e["fpr_by_length"])
                for n, e in r.get("tests", {}).items()
                if "fpr_by_length" in e
            ]
            for where, bins in parts:
                body += [[_name(r), where, b["tokens"], str(b["n"]), _ci(b)] for b in bins]
        lines += _table(["detector", "prompts", "tokens", "n", "FPR"], body) + [""]
        lines += ["### Jailbreak-sensitive layers (ranked by selection score)", ""]
        for i, s in enumerate(rep["sensitive_layers"], 1):
            tail = "; ".join(f"{k} {v:.3f}" for k, v in s["tests"].items())
            lines.append(
                f"{i}. {s['source']} layer {s['layer']}: selection {s['selection']:.3f} "
                f"(length only {s['length_selection']:.3f}); {s['feature']}, {s['classifier']}; "
                f"CV F1 {s['f1']:.3f} ± {s['f1_std']:.3f}, AUROC {s['auroc']:.3f}"
                + (f"; {tail}" if tail else "")
            )
        lines += ["", "### All results", ""]
        lines += _table(
            [
                "detector",
                "selection",
                "worst held-out",
                "F1",
                "accuracy",
                "AUROC",
                f"TPR @ FPR {target}",
                *tests,
            ],
            [
                [
                    _name(r),
                    f"{r['selection']:.3f}",
                    _worst(r),
                    f"{r['f1']:.3f} ± {r['f1_std']:.3f}",
                    f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}",
                    f"{r['auroc']:.3f} ± {r['auroc_std']:.3f}",
                    _ci(r["tpr_at_fpr"][target]),
                    *(_ci(r.get("tests", {}).get(n)) for n in tests),
                ]
                for r in ranked(rep["baseline"]) + ranked(rep["rows"])
            ],
        ) + [""]
    return "\n".join(lines)
