"""How ``detect`` ranks its detectors, and what it measured as one dict per model.

Detectors are ranked by their selection score, the out-of-fold TPR at the target FPR (never by
in-distribution F1). That is the inner contest; the number reported for the winner comes from
the outer splits around it (``nested``), and the text baselines go through the same procedure.
"""

from __future__ import annotations

from jbtrace.detect import nested
from jbtrace.detect.train import ModelReport


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
    """Layers ranked by their best detector's selection score, beside the best text baseline's."""
    text = ranked(report["baseline"])[0]
    text_f1 = max(r["f1"] for r in report["baseline"])
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
                "baseline_selection": text["selection"],
                "over_text_baseline": r["f1"] - text_f1,
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
    out["chosen"] = _with_eval(nested.chosen(report.rows, ranked(report.rows)), report.data)
    out["best_baseline"] = _with_eval(
        nested.chosen(report.baseline, ranked(report.baseline)), report.data
    )
    both = out["chosen"] and out["best_baseline"]
    out["margin"] = (
        nested.margin(out["chosen"]["outer"]["tpr"], out["best_baseline"]["outer"]["tpr"])
        if both and out["chosen"]["outer"] and out["best_baseline"]["outer"]
        else None
    )
    return out


def _with_eval(chosen: dict | None, data: dict) -> dict | None:
    """The chosen candidate's FPR on each evaluation-only benign set, and the worst of them."""
    if chosen is None:
        return None
    names = [n for n, info in data.get("test_sets", {}).items() if info.get("evaluation_only")]
    chosen["eval_fpr"] = {n: chosen["tests"][n] for n in names if n in chosen["tests"]}
    rates = [(n, e["rate"]) for n, e in chosen["eval_fpr"].items() if e["rate"] is not None]
    chosen["worst_eval"] = (
        dict(zip(("set", "rate"), max(rates, key=lambda t: t[1]), strict=True)) if rates else None
    )
    return chosen
