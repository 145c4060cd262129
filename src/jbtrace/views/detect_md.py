"""detect.md: what ``detect`` measured (``detect.ranking.to_dict`` per model), as markdown."""

from __future__ import annotations

from jbtrace.detect.evaluate import INTERVAL
from jbtrace.detect.ranking import ranked
from jbtrace.detect.train import DetectOptions
from jbtrace.views.detect_headline import headline


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("rate") is None:
        return ""
    return f"{entry['rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in body
    ]


def _name(row: dict) -> str:
    if not row.get("source"):
        return f"text baseline: {row['feature']} ({row['classifier']})"
    return f"{row['source']} {row['layer']} {row['feature']} ({row['classifier']})"


def _auroc(row: dict) -> str:
    a = row.get("auroc_interval")
    if not a:
        return f"{row['oof_auroc']:.3f}"
    return f"{a['auroc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def _worst(row: dict) -> str:
    w = row.get("worst_held_out")
    return f"{w['source']}: {w['metric']} {w['rate']:.3f}" if w else ""


def _summary_rows(rep: dict) -> list[dict]:
    """The best row of each text baseline, then the best detector of each (source, feature)."""
    best = {}
    for row in ranked(rep["baseline"]) + ranked(rep["rows"]):
        best.setdefault((row.get("source"), row["feature"]), row)
    return list(best.values())


def _preamble(command: str, options: DetectOptions, protocol: str) -> list[str]:
    target = f"{options.target_fpr:g}"
    cross = protocol == "cross-source"
    ranking = f"out-of-fold TPR at FPR {target} (the inner contest)"
    left_out = "; then each prompt source left out in turn (trained on the others, scored on it)"
    protocol = (
        f"Protocol `{protocol}`: {options.folds}-fold stratified cross-validation "
        "grouped by near-duplicate cluster (word 5-gram Jaccard ≥ "
        f"{options.near_duplicate:g}; seed {options.seed})" + (left_out if cross else "")
    )
    point = (
        f". **Operating point**: every F1, accuracy, TPR and FPR is at the threshold that flags "
        f"{target} of the held-out (out-of-fold) benign prompts; for a held-out source that "
        f"threshold is set without it. Intervals are {INTERVAL} for proportions; F1 / accuracy "
        f"/ AUROC are mean ± std over folds. Ranking: {ranking}, not in-distribution F1. "
        "Probabilities are calibrated by a sigmoid fitted on out-of-fold scores "
        "(Brier score in detect.json). The number reported for the recommended detector is the "
        "outer one: for each "
        + ("held-out source" if cross else "grouped outer fold")
        + " the whole selection is re-run on the rest and its winner scored on it."
    )
    matched = " Training prompts are length-matched." if options.match_length else ""
    return ["# jbtrace detect", "", f"`{command}`", "", protocol + point + matched, ""]


def _data(rep: dict) -> list[str]:
    """The training prompts, near-duplicates, test sets, plan and notes of one model."""
    data, used = rep["data"], rep["data"]["lengths_used"]
    b, j = used["benign"], used["jailbreak"]
    lines = [
        f"Training prompts: {b['n']} benign (median {b['median']:.0f} tokens), "
        f"{j['n']} jailbreak (median {j['median']:.0f} tokens); "
        f"length KS statistic {used['ks_statistic']:.3f} (p = {used['ks_pvalue']:.2g})."
    ]
    if data.get("length_matching"):
        lines.append(f"Length matching: {data['length_matching']}.")
    nd = data["near_duplicates"]
    lines.append(
        f"Near-duplicates: {nd['clusters']} clusters; {nd['prompts_in_shared_clusters']} "
        "training prompts share a cluster (kept on one side of every fold)."
    )
    for name, info in data.get("test_sets", {}).items():
        lines.append(
            f"Test set `{name}` ({info['source']}, {info['label']}): {info['n']} prompts "
            f"({info['overlap_removed']} exact and {info['near_duplicates_removed']} "
            "near-duplicates of training prompts removed)."
        )
    plan = rep["plan"]
    lines += [
        f"Plan: {plan['layer_reads']} layer reads in {plan['passes']} pass(es), "
        f"{plan['feature_bytes_per_pass'] / 2**20:.1f} MiB of features per pass, "
        f"CP tensor {plan['cp_tensor_bytes'] / 2**20:.1f} MiB per fit; "
        f"took {rep['seconds']:.0f} s.",
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
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def _best(rep: dict, summary: list[dict], tests: list[str], target: str) -> list[str]:
    """The best detector per feature beside the length-only baseline."""
    test_sets = rep["data"].get("test_sets", {})
    points = list(summary[0]["tpr_at_fpr"])
    header = [
        "detector",
        "selection",
        "worst held-out",
        f"CV F1 @ FPR {target}",
        "AUROC [cluster bootstrap]",
        "FPR @ TPR 0.95",
        *(f"TPR @ FPR {p}" for p in points),
        *(
            f"{n} ({test_sets.get(n, {}).get('label', n.split('_')[-1])[:1].upper()})"
            for n in tests
        ),
    ]
    body = [
        [
            _name(r),
            f"{r['selection']:.3f}",
            _worst(r),
            f"{r['f1']:.3f} ± {r['f1_std']:.3f}",
            _auroc(r),
            _ci(r.get("fpr_at_tpr", {}).get("0.95")),
            *(_ci(r["tpr_at_fpr"][p]) for p in points),
            *(_ci(r.get("tests", {}).get(n)) for n in tests),
        ]
        for r in summary
    ]
    title = "### Best detector per feature, beside the text baselines"
    return [title, ""] + _table(header, body) + [""]


def _held_out(summary: list[dict], target: str) -> list[str]:
    """Each held-out source's rate at the threshold set without it."""
    held = list(summary[0].get("held_out", {}))
    if not held:
        return []
    lines = [
        f"### Held-out sources (rate at the threshold for FPR {target} set without the source)",
        "",
    ]
    lines += _table(
        ["detector", *(f"{s} ({summary[0]['held_out'][s]['metric']})" for s in held)],
        [[_name(r), *(_ci(r["held_out"].get(s)) for s in held)] for r in summary],
    ) + [""]
    removed = {
        s: e["near_copies_out_of_training"]
        for s, e in summary[0]["held_out"].items()
        if e["near_copies_out_of_training"]
    }
    if removed:
        lines += [
            "Training prompts that are near-copies of a held-out source's prompts, left out of "
            "training while it is held out: "
            + ", ".join(f"{s} {n}" for s, n in removed.items())
            + ".",
            "",
        ]
    return lines


def _by_length(summary: list[dict]) -> list[str]:
    """FPR per prompt-length bin of the given rows (the best text baseline, the best detector)."""
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
    title = "### FPR by prompt length (benign prompts; out-of-fold, held-out sources, test sets)"
    return [title, ""] + _table(["detector", "prompts", "tokens", "n", "FPR"], body) + [""]


def _sensitive(rep: dict) -> list[str]:
    lines = ["### Jailbreak-sensitive layers (ranked by selection score)", ""]
    for i, s in enumerate(rep["sensitive_layers"], 1):
        tail = "; ".join(f"{k} {v:.3f}" for k, v in s["tests"].items())
        lines.append(
            f"{i}. {s['source']} layer {s['layer']}: selection {s['selection']:.3f} "
            f"(best text baseline {s['baseline_selection']:.3f}); {s['feature']}, "
            f"{s['classifier']}; "
            f"CV F1 {s['f1']:.3f} ± {s['f1_std']:.3f}, AUROC {s['auroc']:.3f}"
            + (f"; {tail}" if tail else "")
        )
    return lines


def _all_results(rep: dict, tests: list[str], target: str) -> list[str]:
    header = [
        "detector",
        "selection",
        "worst held-out",
        "F1",
        "accuracy",
        "AUROC",
        f"TPR @ FPR {target}",
        *tests,
    ]
    body = [
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
    ]
    return ["", "### All results", ""] + _table(header, body) + [""]


def detect_markdown(command: str, options: DetectOptions, reports: list[dict]) -> str:
    """detect.md: the protocol, then per model its data, best detectors and every result."""
    target = f"{options.target_fpr:g}"
    protocol = reports[0]["data"].get("protocol", options.protocol) if reports else ""
    lines = _preamble(command, options, protocol)
    for rep in reports:
        first = (rep["rows"] or rep["baseline"])[0]
        tests = list(rep["data"].get("test_sets", {})) + [
            n for n in first.get("tests", {}) if n.startswith("split_")
        ]
        summary = _summary_rows(rep)
        lines += [f"## {rep['label']}", ""] + [x for h in headline(rep) for x in (h, "")]
        lines += _data(rep)
        lines += _best(rep, summary, tests, target) + _held_out(summary, target)
        pair = [ranked(rep["baseline"])[0]] + ranked(rep["rows"])[:1]  # best text, best trace
        lines += _by_length(pair) + _sensitive(rep) + _all_results(rep, tests, target)
    return "\n".join(lines)
