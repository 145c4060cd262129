"""Write a result's files into a run: figures beside the numbers, JSON last (its presence means complete)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from jbtrace.analysis import compare
from jbtrace.analysis.compare import CompareResult
from jbtrace.detect import report
from jbtrace.detect.train import DetectOptions, ModelReport
from jbtrace.trace import store
from jbtrace.views import plot


def write_compare(result: CompareResult, run_dir, svg: bool = False) -> list:
    """Write figures, add the per-cell variables to RUN/trace.zarr, then summary.md and compare.json (last)."""
    run_dir = Path(run_dir)
    (run_dir / "compare.json").unlink(missing_ok=True)  # a failed rerun must not leave a stale result looking current
    paths = []
    for k, stat in enumerate(map(str, result.cells.stat.values)):
        suffix = "" if k == 0 else f"_{stat}"
        fig = plot.significance_grid(result.cells, stat, q=result.params["q"])
        paths += plot.save(fig, run_dir / f"figure_significance{suffix}", svg=svg)
        paths += plot.save(plot.profiles(result.layer_profile, result.position_profile, stat), run_dir / f"profiles{suffix}", svg=svg)
    store.update(run_dir, result.cells[list(compare.CELL_VARS)])
    for name, text in (("summary.md", result.summary_markdown()), ("compare.json", json.dumps(result.to_json(), indent=1))):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, run_dir / name)
        paths.append(run_dir / name)
    return paths


def write_detect(reports: list[ModelReport], run_dir: str | Path, options: DetectOptions, command: str) -> list[Path]:
    """Write RUN/detect.json|md|png|pdf together: into a temporary folder first, then moved into RUN."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dicts = [report.to_dict(r) for r in reports]
    tmp = Path(tempfile.mkdtemp(prefix=".detect-", dir=run_dir))
    try:
        (tmp / "detect.md").write_text(report.markdown(command, options, dicts))
        plot.save(plot.detect_curves(dicts), tmp / "detect")
        options_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
        (tmp / "detect.json").write_text(json.dumps({"command": command, "options": options_dict, "models": dicts},
                                                    indent=1, default=float))
        (run_dir / "detect.json").unlink(missing_ok=True)
        for name in report.FILES:  # detect.json last: its presence means the set is complete
            (tmp / name).replace(run_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [run_dir / n for n in report.FILES]


GUARD_FILES = ("guard.jsonl", "guard.md", "guard.json")


def write_guard(result, run_dir: str | Path, command: str) -> list[Path]:
    """Write RUN/guard.jsonl, guard.md and guard.json (last: its presence means complete) via a temporary folder."""
    from jbtrace.defend.evaluate import markdown

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".guard-", dir=run_dir))
    try:
        with (tmp / "guard.jsonl").open("w", encoding="utf-8") as f:
            for row in result.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "guard.md").write_text(markdown(result, command), encoding="utf-8")
        (tmp / "guard.json").write_text(json.dumps({"command": command, **result.summary}, indent=1, default=float))
        (run_dir / "guard.json").unlink(missing_ok=True)
        for name in GUARD_FILES:
            (tmp / name).replace(run_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [run_dir / n for n in GUARD_FILES]


def write_outcomes(result, run_dir: str | Path, command: str) -> list[Path]:
    """Write RUN/outcomes.md, outcomes.json, then outcomes.jsonl (last: what ``outcomes:`` sources read)."""
    from jbtrace.prompts.outcomes import FILE, write_outcomes as write_records

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FILE).unlink(missing_ok=True)  # a failed rerun must not leave stale outcomes looking current
    tmp = Path(tempfile.mkdtemp(prefix=".outcomes-", dir=run_dir))
    names = ["outcomes.md", "outcomes.json", FILE]
    try:
        (tmp / "outcomes.md").write_text(f"`{command}`\n\n" + result.markdown(), encoding="utf-8")
        summary = {"command": command, **result.config, "rates": result.rates, "paired": result.paired}
        (tmp / "outcomes.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
        write_records(result.outcomes, tmp / FILE)
        for name in names:
            (tmp / name).replace(run_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [run_dir / n for n in names]
