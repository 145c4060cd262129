"""Write a result's files into a run: figures beside the numbers, JSON last (its presence means complete)."""

from __future__ import annotations

import json
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
    """Write figures, summary.md and compare.json, and add the per-cell variables to RUN/trace.zarr.

    Everything is made in a temporary folder first, so a failure leaves the previous result
    untouched; then the store is updated, the old compare.json removed and the new files
    moved in, compare.json last (its presence means the set is complete).
    """
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".compare-", dir=run_dir))
    try:
        for k, stat in enumerate(map(str, result.cells.stat.values)):
            suffix = "" if k == 0 else f"_{stat}"
            plot.save(plot.significance_grid(result.cells, stat, q=result.params["q"]), tmp / f"figure_significance{suffix}",
                      svg=svg)
            plot.save(plot.profiles(result.layer_profile, result.position_profile, stat), tmp / f"profiles{suffix}", svg=svg)
        (tmp / "summary.md").write_text(result.summary_markdown(), encoding="utf-8")
        (tmp / "compare.json").write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
        store.update(run_dir, result.cells[list(compare.CELL_VARS)])
        (run_dir / "compare.json").unlink(missing_ok=True)  # a half-moved set must not look complete
        names = sorted(p.name for p in tmp.iterdir() if p.name != "compare.json") + ["compare.json"]
        for name in names:
            (tmp / name).replace(run_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [run_dir / name for name in names]


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
