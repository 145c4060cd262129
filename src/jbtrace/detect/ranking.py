"""How ``detect`` ranks its detectors, and what it measured as one dict per model.

Detectors are ranked by their selection score: under ``--protocol cross-source`` the share of
correct decisions on the worst held-out source (TPR on a jailbreak source, 1 − FPR on a
benign one), otherwise the out-of-fold TPR at the target FPR; never by in-distribution F1.
"""

from __future__ import annotations

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
    """Layers ranked by their best detector's selection score, beside the length baseline's."""
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
