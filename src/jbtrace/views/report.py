"""RUN/report.html: one self-contained page of what a run holds, readable offline.

Each section appears when the run has its data: what was run (run.json, the store's provenance),
Benign / Jailbreak / Difference heatmaps per model and statistic (the store, with the comparison's
per-cell variables), profiles and observations (compare.json), attention maps (the store),
detectors (detect.json), the guard (guard.json, guard.jsonl) and a sample of prompts
(prompts.jsonl). Text is escaped by jinja2's autoescape; numbers reach the page's scripts as JSON in
``<script type="application/json">`` blocks; plotly.js is embedded once; a Content-Security-Policy
allows only this page's own two scripts (by hash) and no request to any host.

This module reads the run and writes the page; ``report_sections`` turns the run's JSON files into
sections, ``report_maps`` pools and rounds the heatmaps and attention maps, ``report_page``
renders the template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jbtrace import publish
from jbtrace.errors import UserError
from jbtrace.prompts.sample import read_sample, write_sample
from jbtrace.trace import store
from jbtrace.views.report_maps import attention, heatmaps
from jbtrace.views.report_page import render
from jbtrace.views.report_sections import about, compare_section, detect_section, guard_section

FILE = "report.html"


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
    publish.recover(run_dir)  # a publish a kill interrupted is finished before anything is read
    ds = store.open_run(run_dir) if (run_dir / store.STORE).is_dir() else None
    run_json, compare_json = _json(run_dir / "run.json"), _json(run_dir / "compare.json")
    detect_json, guard_json = _json(run_dir / "detect.json"), _json(run_dir / "guard.json")
    guard_rows = _jsonl(run_dir / "guard.jsonl")
    prompts = read_sample(run_dir)
    if ds is None and not (detect_json or guard_json or guard_rows):
        raise UserError(
            f"{run_dir}: nothing to report (no {store.STORE}, detect.json or guard.json; "
            "run `jbtrace run` first)"
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


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object (a jbtrace result file is one)")
    return data


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        rows = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: not valid JSON lines ({error})") from None
    if not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path}: a line is not a JSON object")
    return rows
