"""run and demo: extract → figure → comparison → report in one call (`jbtrace run`, `demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.compare import compare_run
from jbtrace.commands.extract import extract_run
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.plot import plot_run
from jbtrace.commands.prompts import check_positions
from jbtrace.commands.report import report_run
from jbtrace.errors import UserError
from jbtrace.models.presets import DEMO_LIMIT, DEMO_MAX_TOKENS, DEMO_PAPER_LOAD, DEMO_PROMPTS

if TYPE_CHECKING:
    import xarray as xr

    from jbtrace.analysis.compare import CompareResult
    from jbtrace.trace.engine import Engine
    from jbtrace.trace.extract import ExtractOptions


@dataclass(frozen=True)
class RunResult:
    """What `run_pipeline` wrote: the store, the figures, the comparison and its files, the
    report."""

    store: xr.Dataset
    figures: list[Path]
    compare: CompareResult
    compare_paths: list[Path]
    report: Path


def run_pipeline(
    prompts: PromptOptions,
    models: ModelOptions,
    options: ExtractOptions | None = None,
    out: RunOptions | None = None,
    engine: Engine | None = None,
    *,
    min_count: int = 1,
    positions: str | None = None,
    svg: bool = False,
    command: str | None = None,
    progress=None,
    note=None,
) -> RunResult:
    """The whole of `jbtrace run`: `extract_run` (as a run, never a shard), the heatmap grid
    (`plot_run`), the comparison (`compare_run`, cells with at least two prompts) and the report,
    all into ``out.out_dir``. Reports via ``progress(what, total)->advance``, ``note(line)``."""
    from jbtrace.trace.extract import ExtractOptions

    options, out = options or ExtractOptions(), out or RunOptions()
    if options.shard != (0, 1):
        raise UserError("run extracts every prompt: shard with `jbtrace extract --shard`")
    check_positions(positions, options.max_tokens)
    ds = extract_run(
        prompts,
        models,
        options,
        out,
        engine,
        command=command,
        name="run",
        progress=progress,
        note=note,
    )
    figures = plot_run(out.out_dir, min_count=min_count, positions=positions, svg=svg)
    result, paths = compare_run(out.out_dir, svg=svg, min_count=max(min_count, 2), seed=out.seed)
    return RunResult(ds, figures, result, paths, report_run(out.out_dir))


def demo_run(
    out_dir: Path = Path("runs/demo"),
    *,
    limit: int = DEMO_LIMIT,
    max_tokens: int = DEMO_MAX_TOKENS,
    preset: str = "demo",
    command: str | None = None,
    progress=None,
    note=None,
) -> RunResult:
    """The whole of `jbtrace demo`: `run_pipeline` on a preset's models (`models.preset`) over the
    demo's prompt sets, into ``out_dir`` (always rewritten: the demo's own folder)."""
    from jbtrace.models import preset as preset_models
    from jbtrace.trace.extract import ExtractOptions

    specs, labels = preset_models(preset)
    load = DEMO_PAPER_LOAD if preset == "paper" else {}
    return run_pipeline(
        PromptOptions(prompts=DEMO_PROMPTS, limit=limit),
        ModelOptions(model=tuple(specs), model_name=tuple(labels), **load),
        ExtractOptions(max_tokens=max_tokens),
        RunOptions(out_dir=out_dir, overwrite=True),
        min_count=2,
        command=command,
        progress=progress,
        note=note,
    )
