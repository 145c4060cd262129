"""What ``detect`` measured, as dicts and markdown (``views.outputs`` writes them into a run)."""

from __future__ import annotations

from jbtrace.detect.train import DetectOptions, ModelReport

FILES = ("detect.json", "detect.md", "detect.png", "detect.pdf")


def best_per_layer(rows: list[dict], by_feature: bool = False) -> dict:
    """The row with the highest CV F1 per (source, layer) [or per (source, layer, feature)]."""
    best = {}
    for row in rows:
        key = (row["source"], row["layer"]) + ((row["feature"],) if by_feature else ())
        if key not in best or row["f1"] > best[key]["f1"]:
            best[key] = row
    return best


def sensitive_layers(report: dict, top: int = 5) -> list[dict]:
    """Layers ranked by their best CV F1, with the margin over the best length-only F1."""
    length = max(r["f1"] for r in report["baseline"])
    ranked = sorted(best_per_layer(report["rows"]).values(), key=lambda r: (-r["f1"], -r["auroc"]))
    return [{"source": r["source"], "layer": r["layer"], "feature": r["feature"], "classifier": r["classifier"],
             "f1": r["f1"], "f1_std": r["f1_std"], "auroc": r["auroc"], "over_length_baseline": r["f1"] - length,
             "tests": {k: v["rate"] for k, v in r.get("tests", {}).items()}} for r in ranked[:top]]


def to_dict(report: ModelReport) -> dict:
    out = {"name": report.name, "label": report.label, "spec": report.spec, "random_init": report.random_init,
           "seconds": round(report.seconds, 2), "plan": report.plan, "data": report.data, "notes": report.notes,
           "baseline": report.baseline, "rows": report.rows}
    out["sensitive_layers"] = sensitive_layers(out)
    return out


def _pm(row: dict, metric: str) -> str:
    return f"{row[metric]:.3f} ± {row[metric + '_std']:.3f}"


def _tests(row: dict, names: list[str]) -> list[str]:
    return [f"{row['tests'][n]['rate']:.3f}" if n in row.get("tests", {}) else "" for n in names]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def markdown(command: str, options: DetectOptions, reports: list[dict]) -> str:
    lines = ["# jbtrace detect", "", f"`{command}`", "",
             f"Protocol `{options.protocol}`, {options.folds}-fold stratified CV (seed {options.seed}); "
             f"F1 / accuracy / AUROC are mean ± std over folds; positive class = jailbreak. "
             f"Test-set rates are the fraction flagged at the threshold that maximises TPR − FPR on the "
             f"out-of-fold scores of the training prompts (TPR on jailbreak sets, FPR on benign sets)."
             + (" Training prompts are length-matched." if options.match_length else ""), ""]
    for rep in reports:
        data, tests = rep["data"], list(rep["data"].get("test_sets", {}))
        test_cols = [f"{n} ({rep['data']['test_sets'][n]['label'][:1].upper()}: "
                     f"{'TPR' if rep['data']['test_sets'][n]['label'] == 'jailbreak' else 'FPR'})" for n in tests]
        lines += [f"## {rep['label']}", ""]
        used = data["lengths_used"]
        lines.append(f"Training prompts: {used['benign']['n']} benign (median {used['benign']['median']:.0f} tokens), "
                     f"{used['jailbreak']['n']} jailbreak (median {used['jailbreak']['median']:.0f} tokens); "
                     f"length KS statistic {used['ks_statistic']:.3f} (p = {used['ks_pvalue']:.2g}).")
        for name, info in data.get("test_sets", {}).items():
            lines.append(f"Test set `{name}` ({info['source']}, {info['label']}): {info['n']} prompts "
                         f"({info['overlap_removed']} in the training sets removed).")
        plan = rep["plan"]
        lines += [f"Plan: {plan['layer_reads']} layer reads in {plan['passes']} pass(es), "
                  f"{plan['feature_bytes_per_pass'] / 2**20:.1f} MiB of features per pass, "
                  f"CP tensor {plan['cp_tensor_bytes'] / 2**20:.1f} MiB per fit; took {rep['seconds']:.0f} s.", ""]
        unconverged = sum(r.get("unconverged_fits", 0) for r in rep["rows"] + rep["baseline"])
        notes = rep["notes"] + ([f"{unconverged} classifier fits stopped at their iteration limit "
                                 "(ConvergenceWarning; counted per row in detect.json)"] if unconverged else [])
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
        lines += ["### Length-only baseline (log token count)", ""]
        lines += _table(["classifier", "F1", "accuracy", "AUROC", *test_cols],
                        [[r["classifier"], _pm(r, "f1"), _pm(r, "accuracy"), _pm(r, "auroc"), *_tests(r, tests)]
                         for r in rep["baseline"]]) + [""]
        features = list(dict.fromkeys(r["feature"] for r in rep["rows"]))
        per_feature = best_per_layer(rep["rows"], by_feature=True)
        layers = sorted({(r["source"], r["layer"]) for r in rep["rows"]})
        lines += ["### CV F1 by layer and feature (best classifier)", ""]
        lines += _table(["source", "layer", *features],
                        [[s, str(layer), *(f"{per_feature[(s, layer, f)]['f1']:.3f} ({per_feature[(s, layer, f)]['classifier']})"
                                           for f in features)] for s, layer in layers]) + [""]
        if tests or any("holdout" in r for r in rep["rows"]):
            lines += ["### Generalization of the best detector per layer", ""]
            hold = any("holdout" in r for r in rep["rows"])
            body = []
            for (s, layer), r in sorted(best_per_layer(rep["rows"]).items()):
                extra = [f"{r['holdout']['f1']:.3f}", f"{r['holdout']['fpr']:.3f}"] if hold else []
                body.append([s, str(layer), r["feature"], r["classifier"], _pm(r, "f1"), *extra, *_tests(r, tests)])
            lines += _table(["source", "layer", "feature", "classifier", "CV F1",
                             *(["held-out F1", "held-out FPR"] if hold else []), *test_cols], body) + [""]
        lines += ["### Jailbreak-sensitive layers (ranked by CV F1; selection on CV, so optimistic)", ""]
        for i, s in enumerate(rep["sensitive_layers"], 1):
            tail = "; ".join(f"{k} {v:.3f}" for k, v in s["tests"].items())
            lines.append(f"{i}. {s['source']} layer {s['layer']}: F1 {s['f1']:.3f} ± {s['f1_std']:.3f} "
                         f"({s['feature']}, {s['classifier']}), AUROC {s['auroc']:.3f}, "
                         f"{s['over_length_baseline']:+.3f} over the length baseline" + (f"; {tail}" if tail else ""))
        lines += ["", "### All results", ""]
        lines += _table(["source", "layer", "feature", "classifier", "F1", "accuracy", "AUROC", *test_cols],
                        [[r["source"], str(r["layer"]), r["feature"], r["classifier"], _pm(r, "f1"),
                          _pm(r, "accuracy"), _pm(r, "auroc"), *_tests(r, tests)] for r in rep["rows"]]) + [""]
    return "\n".join(lines)
