"""Write a result's files into a run: figures and markdown beside the numbers, the summary file
last (its presence means complete), published by rename with ``publish.staged``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from jbtrace.analysis import compare
from jbtrace.analysis.compare import CompareResult
from jbtrace.detect.ranking import to_dict
from jbtrace.detect.train import DetectOptions, ModelReport
from jbtrace.publish import staged
from jbtrace.trace import store
from jbtrace.views import plot
from jbtrace.views.compare_md import compare_markdown
from jbtrace.views.detect_md import detect_markdown
from jbtrace.views.guard_md import guard_markdown
from jbtrace.views.outcomes_md import outcomes_markdown


def write_compare(result: CompareResult, run_dir, svg: bool = False) -> list[Path]:
    """Write figures, summary.md and compare.json (last), and add the per-cell variables to
    RUN/trace.zarr.

    Everything is made in a temporary folder first, so a failure leaves the previous result
    untouched.
    """
    run_dir = Path(run_dir)
    with staged(run_dir, "compare.json") as tmp:
        for k, stat in enumerate(map(str, result.cells.stat.values)):
            suffix = "" if k == 0 else f"_{stat}"
            plot.save(
                plot.significance_grid(result.cells, stat, q=result.params["q"]),
                tmp / f"figure_significance{suffix}",
                svg=svg,
            )
            plot.save(
                plot.profiles(result.layer_profile, result.position_profile, stat),
                tmp / f"profiles{suffix}",
                svg=svg,
            )
        (tmp / "summary.md").write_text(compare_markdown(result), encoding="utf-8")
        (tmp / "compare.json").write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir() if p.name != "compare.json") + ["compare.json"]
        store.update(run_dir, result.cells[list(compare.CELL_VARS)])
    return [run_dir / name for name in names]


DETECT_FILES = ("detect.json", "detect.md", "detect.png", "detect.pdf")


def finite(value):
    """``value`` with every non-finite number (NaN, ±inf) as None, for strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def strict_json(value, **options) -> str:
    """JSON that every parser reads: no bare NaN or Infinity (they become null)."""
    return json.dumps(finite(value), allow_nan=False, **options)


def write_detect(
    reports: list[ModelReport], run_dir: str | Path, options: DetectOptions, command: str
) -> list[Path]:
    """Write RUN/detect.md|png|pdf and detect.json (last) together."""
    dicts = [to_dict(r) for r in reports]
    with staged(run_dir, "detect.json") as tmp:
        (tmp / "detect.md").write_text(detect_markdown(command, options, dicts))
        plot.save(plot.detect_curves(dicts), tmp / "detect")
        options_dict = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()
        }
        (tmp / "detect.json").write_text(
            json.dumps(
                {"command": command, "options": options_dict, "models": dicts},
                indent=1,
                default=float,
            )
        )
    return [Path(run_dir) / n for n in DETECT_FILES]


GUARD_FILES = ("guard.jsonl", "guard.md", "guard.json")


def write_guard(result, run_dir: str | Path, command: str) -> list[Path]:
    """Write RUN/guard.jsonl, guard.md and guard.json (last: its presence means complete)."""
    with staged(run_dir, "guard.json") as tmp:
        with (tmp / "guard.jsonl").open("w", encoding="utf-8") as f:
            for row in result.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "guard.md").write_text(guard_markdown(result, command), encoding="utf-8")
        (tmp / "guard.json").write_text(
            strict_json({"command": command, **result.summary}, indent=1, default=float)
        )
    return [Path(run_dir) / n for n in GUARD_FILES]


def write_outcomes(result, run_dir: str | Path, command: str) -> list[Path]:
    """Write RUN/outcomes.md, outcomes.json, then outcomes.jsonl (last: what ``outcomes:``
    sources read)."""
    from jbtrace.prompts.judged_answers import FILE
    from jbtrace.prompts.judged_answers import write_outcomes as write_records

    with staged(run_dir, FILE) as tmp:
        md = f"`{command}`\n\n" + outcomes_markdown(result.rates, result.paired)
        (tmp / "outcomes.md").write_text(md, encoding="utf-8")
        summary = {
            "command": command,
            **result.config,
            "rates": result.rates,
            "paired": result.paired,
        }
        (tmp / "outcomes.json").write_text(
            strict_json(summary, indent=1, default=float), encoding="utf-8"
        )
        write_records(result.outcomes, tmp / FILE)
    return [Path(run_dir) / n for n in ("outcomes.md", "outcomes.json", FILE)]
