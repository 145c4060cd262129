"""The report's sections from the run's JSON files: what was run, profiles, detectors, guard.

Each function turns one file's content into plain JSON-ready values for the page, or None when
the run has no such data.
"""

from __future__ import annotations

import json

import numpy as np

from jbtrace.trace import store
from jbtrace.views.detect_headline import headline
from jbtrace.views.report_maps import compact

SAMPLE_ROWS = 6  # guard rows shown side by side per set


ABOUT_SETTINGS = (
    "jbtrace_version",
    "created",
    "statistics",
    "align",
    "bins",
    "max_tokens",
    "padding_side",
    "chat_template",
    "seed",
    "limit",
)


def kind(random_init) -> str:
    return "stand-in (random init)" if random_init else "real (pretrained weights)"


def about(ds, run_json, detect_json, guard_json) -> dict:
    """Command, models (real or stand-in), prompt sets (source, size) and the provenance record."""
    prov = store.provenance(ds) if ds is not None else (run_json or {}).get("provenance", {})
    commands = [
        c
        for c in (
            (run_json or {}).get("command") or prov.get("command"),
            (detect_json or {}).get("command"),
            (guard_json or {}).get("command"),
        )
        if c
    ]
    detected = (detect_json or {}).get("models", [])
    settings = {
        k: prov[k] if isinstance(prov[k], str) else json.dumps(prov[k])
        for k in ABOUT_SETTINGS
        if k in prov
    }
    return {
        "commands": commands,
        "models": _models(prov, detected),
        "sets": _sets(prov, detected),
        "settings": settings,
        "provenance": json.dumps(prov, indent=1, ensure_ascii=False) if prov else None,
    }


def _models(prov: dict, detected: list[dict]) -> list[dict]:
    """The provenance's models, then those only detect.json names."""
    models = [
        {
            "name": name,
            "spec": info.get("spec") or info.get("source"),
            "kind": kind(info.get("random_init")),
            "class": info.get("class"),
            "layers": info.get("blocks"),
            "dtype": info.get("dtype"),
            "device": info.get("device"),
        }
        for name, info in prov.get("models", {}).items()
    ]
    named = {m["name"] for m in models}
    for rep in detected:
        if rep["name"] not in named:
            models.append(
                {
                    "name": rep["name"],
                    "spec": rep.get("spec"),
                    "kind": kind(rep.get("random_init")),
                    "class": None,
                    "layers": None,
                    "dtype": None,
                    "device": None,
                }
            )
    return models


def _sets(prov: dict, detected: list[dict]) -> list[dict]:
    """The provenance's prompt sets, then the train and test sets of detect.json's first model."""
    sets = [
        {
            "name": s["name"],
            "source": s["source"],
            "size": s.get("size"),
            "sha256": s.get("sha256", ""),
        }
        for s in prov.get("prompt_sets", [])
    ]
    for rep in detected[:1]:
        for group in ("train_sets", "test_sets"):
            for name, info in rep["data"].get(group, {}).items():
                if name not in {s["name"] for s in sets}:
                    sets.append(
                        {
                            "name": name,
                            "source": info.get("source"),
                            "size": info.get("n"),
                            "sha256": "",
                        }
                    )
    return sets


def _profile(rows: list[dict], axis: str) -> dict:
    """One profile (compare.json rows) as columns: x, diff, CI bounds, significant layers."""
    columns = {"x": [r[axis] for r in rows]}
    columns |= {k: compact([r.get(k, np.nan) for r in rows]) for k in ("diff", "ci_low", "ci_high")}
    return columns | (
        {"sig": [bool(r.get("significant")) for r in rows]} if axis == "layer" else {}
    )


def compare_section(result: dict | None) -> dict | None:
    """Profiles with CIs, observations and the ranking from compare.json."""
    if not result:
        return None
    models, profiles = [], {}
    for name, info in result["models"].items():
        models.append(
            {
                "name": name,
                "label": info.get("label", name),
                "observations": info.get("observations", []),
            }
        )
        for stat, s in info.get("stats", {}).items():
            profiles.setdefault(stat, {})[name] = {
                axis: _profile(s.get(f"{axis}_profile", []), axis) for axis in ("layer", "position")
            }
    return {
        "models": models,
        "profiles": profiles,
        "ranking": result.get("ranking_observations", []),
        "params": result.get("params", {}),
        "scenarios": result.get("scenarios", {}),
    }


def detect_section(result: dict | None) -> dict | None:
    """Per model: the headline, the most sensitive layers, the text baselines and F1-by-layer
    curves."""
    if not result:
        return None
    models = []
    for rep in result.get("models", []):
        curves = {}
        for r in rep.get("rows", []):
            key = f"{r['source']} {r['feature']}"
            best = curves.setdefault(key, {})
            if r["layer"] not in best or r["f1"] > best[r["layer"]]["f1"]:
                best[r["layer"]] = r
        lines = [
            {
                "name": key,
                "x": sorted(best),
                "f1": compact([best[k]["f1"] for k in sorted(best)]),
                "std": compact([best[k]["f1_std"] for k in sorted(best)]),
                "auroc": compact([best[k]["auroc"] for k in sorted(best)]),
            }
            for key, best in curves.items()
        ]
        baseline = max(rep.get("baseline", []), key=lambda r: r["f1"], default=None)
        tests = list(rep.get("data", {}).get("test_sets", {}))
        models.append(
            {
                "name": rep["name"],
                "label": rep.get("label", rep["name"]),
                "notes": rep.get("notes", []),
                "sensitive": rep.get("sensitive_layers", []),
                "baseline_rows": rep.get("baseline", []),
                "tests": tests,
                "curves": lines,
                "length_f1": baseline["f1"] if baseline else None,
                "headline": headline(rep),
            }
        )
    return {
        "command": result.get("command"),
        "protocol": result.get("options", {}).get("protocol"),
        "folds": result.get("options", {}).get("folds"),
        "models": models,
    }


def _table(rows: list) -> dict | None:
    """A list of flat dicts as a table (columns in first-seen order); None for anything else."""
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {"columns": columns, "rows": [[_cell(r.get(c)) for c in columns] for r in rows]}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def guard_section(summary: dict | None, rows: list[dict]) -> dict | None:
    """guard.json as tables (lists of records), values (scalars) and rate charts (records with
    rate and CI); guard.jsonl as side-by-side samples: prompt, baseline, guarded response, flag,
    score, verdicts."""
    if not summary and not rows:
        return None
    tables, values, charts = [], {}, []

    def walk(prefix: str, node):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}" if not prefix else f"{prefix} / {key}", value)
        elif isinstance(node, list) and (table := _table(node)):
            tables.append({"name": prefix, **table})
            if all({"rate", "ci_low", "ci_high"} <= set(r) for r in node):
                labels = [
                    " · ".join(str(v) for k, v in r.items() if isinstance(v, str) and k != "text")
                    for r in node
                ]
                charts.append(
                    {
                        "name": prefix,
                        "labels": labels,
                        "rate": compact([r["rate"] for r in node]),
                        "low": compact([r["ci_low"] for r in node]),
                        "high": compact([r["ci_high"] for r in node]),
                    }
                )
        elif prefix != "command":
            values[prefix] = _cell(node)

    walk("", summary or {})
    shown, samples = {}, []
    fixed = ("set", "text", "baseline", "response")
    for row in rows:
        group = str(row.get("set", ""))
        if shown.get(group, 0) < SAMPLE_ROWS:
            shown[group] = shown.get(group, 0) + 1
            samples.append(
                {
                    "set": group,
                    "prompt": _cell(row.get("text")),
                    "baseline": _cell(row.get("baseline")),
                    "response": _cell(row.get("response")),
                    "fields": {k: _cell(v) for k, v in row.items() if k not in fixed},
                }
            )
    return {
        "tables": tables,
        "scalars": values,
        "charts": charts,
        "samples": samples,
        "rows": len(rows),
    }
