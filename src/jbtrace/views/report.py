"""RUN/report.html: one self-contained page of what a run holds, readable offline.

Each section appears when the run has its data: what was run (run.json, the store's provenance),
Benign / Jailbreak / Difference heatmaps per model and statistic (the store, with the comparison's
per-cell variables), profiles and observations (compare.json), attention maps (the store),
detectors (detect.json), the guard (guard.json, guard.jsonl) and a sample of prompts
(prompts.jsonl). Text is escaped by jinja2's autoescape; numbers reach the page's scripts as JSON in
``<script type="application/json">`` blocks; plotly.js is embedded once; a Content-Security-Policy
allows only this page's own two scripts (by hash) and no request to any host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from importlib import resources
from pathlib import Path

import numpy as np
import xarray as xr

from jbtrace.errors import UserError
from jbtrace.prompts.sample import read_sample, write_sample
from jbtrace.trace import store

FILE = "report.html"
MAX_COLUMNS = (
    512  # heatmap positions drawn per model; longer runs are pooled into bins of equal width
)
MAX_CELLS = 250_000  # heatmap cells drawn over all models and statistics (the demo draws 52k); more are pooled
MAX_ATTENTION = 128  # query and key positions drawn per attention map
ATTN_FLOOR = 1e-10  # smallest probability drawn on the log scale (as `jbtrace attention --floor`)
SAMPLE_ROWS = 6  # guard rows shown side by side per set
DIGITS = 4  # significant digits of the numbers handed to the page


def write(run_dir: str | Path, prompt_sets=None, seed: int = 0) -> Path:
    """Write RUN/report.html (temporary name, then rename) and return its path.

    ``prompt_sets``: when given and the run has no prompts.jsonl yet, a sample of their texts is
    written first (commands that have the sets in hand, e.g. ``detect``, pass them).
    """
    run_dir = Path(run_dir)
    if prompt_sets and not (run_dir / "prompts.jsonl").exists():
        write_sample(prompt_sets, run_dir, seed=seed)
    html = render(collect(run_dir))
    path = run_dir / FILE
    tmp = run_dir / f".{FILE}.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- gathering the data


def collect(run_dir: str | Path) -> dict:
    """Everything the page shows, as plain JSON-ready values; sections without data are None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    ds = store.open_run(run_dir) if (run_dir / store.STORE).is_dir() else None
    run_json, compare_json = _json(run_dir / "run.json"), _json(run_dir / "compare.json")
    detect_json, guard_json = _json(run_dir / "detect.json"), _json(run_dir / "guard.json")
    guard_rows = _jsonl(run_dir / "guard.jsonl")
    prompts = read_sample(run_dir)
    if ds is None and not (detect_json or guard_json or guard_rows):
        raise UserError(
            f"{run_dir}: nothing to report (no {store.STORE}, detect.json or guard.json; run `jbtrace run` first)"
        )
    has_maps = ds is not None and "mean" in ds and "count" in ds
    data = {
        "title": str(run_dir.resolve().name),
        "about": about(ds, run_json, detect_json, guard_json),
        "heatmaps": heatmaps(ds) if has_maps else None,
        "compare": compare_section(compare_json),
        "attention": attention(ds) if ds is not None and "attn_mean" in ds else None,
        "detect": detect_section(detect_json),
        "guard": guard_section(guard_json, guard_rows),
        "prompts": prompts or None,
    }
    return data


def _json(path: Path):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON lines ({error})") from None


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
    for rep in (detect_json or {}).get("models", []):
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
    sets = [
        {
            "name": s["name"],
            "source": s["source"],
            "size": s.get("size"),
            "sha256": s.get("sha256", ""),
        }
        for s in prov.get("prompt_sets", [])
    ]
    for rep in (detect_json or {}).get("models", [])[:1]:
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
    keys = (
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
    settings = {
        k: prov[k] if isinstance(prov[k], str) else json.dumps(prov[k]) for k in keys if k in prov
    }
    return {
        "commands": commands,
        "models": models,
        "sets": sets,
        "settings": settings,
        "provenance": json.dumps(prov, indent=1, ensure_ascii=False) if prov else None,
    }


def compact(values) -> list:
    """Nested lists rounded to DIGITS significant digits; NaN and infinities become null."""
    arr = np.asarray(values, dtype=float)
    flat = [
        None if not math.isfinite(v) else float(f"{v:.{DIGITS}g}") for v in arr.ravel().tolist()
    ]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def pool(
    mean: np.ndarray, count: np.ndarray, axis: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count-weighted means over bins of ``width`` along ``axis`` (the mean of every value in the bin)
    and the largest count in each bin; width 1 returns the input."""
    if width == 1:
        return mean, count
    n = count.shape[axis]
    edges = np.arange(0, n, width)
    weighted = np.add.reduceat(np.where(count > 0, mean * count, 0.0), edges, axis=axis)
    total = np.add.reduceat(count, edges, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / total, np.nan), np.maximum.reduceat(
            count, edges, axis=axis
        )


def _extent(count: np.ndarray) -> int:
    """Positions up to the last one with any count (at least 1)."""
    seen = np.flatnonzero(count.reshape(-1, count.shape[-1]).sum(axis=0) > 0)
    return int(seen[-1]) + 1 if seen.size else 1


def heatmaps(ds: xr.Dataset) -> dict:
    """Per statistic and model: scenario means and counts, the difference and the comparison's per-cell variables."""
    a, b = (str(s) for s in ds.scenario.values[:2])
    cells = [v for v in ("g", "q", "ci_low", "ci_high", "significant") if v in ds]
    out = {"scenarios": [a, b], "stats": [str(s) for s in ds.stat.values], "models": [], "maps": {}}
    budget = math.ceil(
        int((ds["count"].sel(scenario=[a, b]).sum("scenario") > 0).sum()) / MAX_CELLS
    )
    for model in map(str, ds.model.values):
        sub = ds.sel(model=model)
        label = str(sub["model_label"].values) if "model_label" in sub.coords else model
        out["models"].append({"name": model, "label": label})
        for stat in out["stats"]:
            cell = sub.sel(stat=stat)
            count = cell["count"].sel(scenario=[a, b]).values
            layers = np.flatnonzero(count.sum(axis=(0, 2)) > 0)
            if layers.size == 0:
                continue
            extent = _extent(count)
            width = max(math.ceil(extent / MAX_COLUMNS), budget)
            count = count[:, layers, :extent]
            mean = cell["mean"].sel(scenario=[a, b]).values[:, layers, :extent]
            mean, count = pool(mean, count, axis=2, width=width)
            entry = {
                "layers": ds.layer.values[layers].tolist(),
                "positions": list(range(0, extent, width)),
                "width": width,
                "a": compact(mean[0]),
                "b": compact(mean[1]),
                "na": count[0].tolist(),
                "nb": count[1].tolist(),
            }
            entry["diff"] = compact(
                np.where((count[0] > 0) & (count[1] > 0), mean[1] - mean[0], np.nan)
            )
            if "significant" in cells:
                sig = cell["significant"].values[layers, :extent].astype(float)
                entry["sig"] = (
                    np.maximum.reduceat(sig, np.arange(0, extent, width), axis=1)
                    .astype(int)
                    .tolist()
                )
            if width == 1:  # per-cell statistics only where cells are drawn one by one
                for name in ("g", "q", "ci_low", "ci_high"):
                    if name in cells:
                        entry[name] = compact(cell[name].values[layers, :extent])
            elif "q" in cells:
                q = np.nan_to_num(cell["q"].values[layers, :extent], nan=np.inf)
                entry["q_min"] = compact(
                    np.minimum.reduceat(q, np.arange(0, extent, width), axis=1)
                )
            out["maps"].setdefault(stat, {})[model] = entry
    return out


def _profile(rows: list[dict], axis: str) -> dict:
    """One profile (compare.json rows) as columns: x, diff, CI bounds, and which layers are significant."""
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


def attention(ds: xr.Dataset) -> dict:
    """Per model and attention layer: log10 mean probability per scenario, their difference, counts."""
    a, b = (str(s) for s in ds.scenario.values[:2])
    maps = []
    mean_all, count_all = ds["attn_mean"], ds["attn_count"]
    heads = "head" in mean_all.dims
    for model in map(str, ds.model.values):
        for layer in ds.attn_layer.values.tolist():
            mean = mean_all.sel(model=model, attn_layer=layer, scenario=[a, b])
            count = count_all.sel(model=model, attn_layer=layer, scenario=[a, b])
            if heads:  # the page shows the head mean; the store keeps every head
                count = count.max("head")
                mean = mean.mean("head")
            mean, count = mean.values, count.values
            if count.sum() == 0:
                continue
            n = max(_extent(count), _extent(count.transpose(0, 2, 1)))
            width = math.ceil(n / MAX_ATTENTION)
            mean, count = mean[:, :n, :n], count[:, :n, :n]
            for axis in (1, 2):
                mean, count = pool(mean, count, axis=axis, width=width)
            logs = np.where(count > 0, np.log10(np.maximum(mean, ATTN_FLOOR)), np.nan)
            both = (count[0] > 0) & (count[1] > 0)
            maps.append(
                {
                    "model": model,
                    "layer": layer,
                    "positions": list(range(0, n, width)),
                    "width": width,
                    "a": compact(logs[0]),
                    "b": compact(logs[1]),
                    "diff": compact(np.where(both, logs[1] - logs[0], np.nan)),
                    "na": count[0].tolist(),
                    "nb": count[1].tolist(),
                }
            )
    return (
        {"scenarios": [a, b], "maps": maps, "heads": "mean over heads" if heads else None}
        if maps
        else None
    )


def detect_section(result: dict | None) -> dict | None:
    """Per model: the most sensitive layers, the length-only baseline and F1-by-layer curves."""
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
    """guard.json as tables (lists of records), values (scalars) and rate charts (records with rate and CI);
    guard.jsonl as side-by-side samples: prompt, baseline, guarded response, flag, score, verdicts."""
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


# ---------------------------------------------------------------- the page


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jbtrace.views", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    env.policies["json.dumps_kwargs"] = {
        "sort_keys": False,
        "separators": (",", ":"),
        "allow_nan": False,
        "ensure_ascii": False,
    }
    return env


def _csp_hash(script: str) -> str:
    return (
        "'sha256-"
        + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
        + "'"
    )


def render(data: dict) -> str:
    """The page: jinja2 template with autoescape, plotly.js and the page's script inline, hashed in the CSP."""
    import plotly.offline

    plotly_js = plotly.offline.get_plotlyjs()
    own_js = (
        resources.files("jbtrace.views").joinpath("templates/report.js").read_text(encoding="utf-8")
    )
    css = (
        resources.files("jbtrace.views")
        .joinpath("templates/report.css")
        .read_text(encoding="utf-8")
    )
    for name, text in (("plotly.js", plotly_js), ("report.js", own_js)):
        if "</script" in text.lower():
            raise RuntimeError(f"{name} contains '</script' and cannot be inlined")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(plotly_js)} {_csp_hash(own_js)}",
            "style-src 'unsafe-inline'",  # plotly sets style attributes and adds style elements at run time
            "img-src data: blob:",  # plotly draws heatmaps into a canvas and shows it as a data: image
            "connect-src 'none'",
            "font-src 'none'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    from markupsafe import Markup

    return (
        _env()
        .get_template("report.html.j2")
        .render(
            csp=csp,
            css=Markup(css),
            plotly_js=Markup(plotly_js),
            own_js=Markup(own_js),
            max_columns=MAX_COLUMNS,
            max_cells=f"{MAX_CELLS:,}",
            max_attention=MAX_ATTENTION,
            **data,
        )
    )
