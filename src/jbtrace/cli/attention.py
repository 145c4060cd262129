"""attention: query × key maps for chosen layers."""

from __future__ import annotations

from typing import Annotated

import typer

from jbtrace.cli.common import (
    MinCount,
    Positions,
    Quiet,
    app,
    command_line,
    groups,
    out,
    progress_bar,
    say,
)
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.trace.engine import Engine
from jbtrace.trace.extract import ExtractOptions


@app.command("attention")
@groups(tokens=("max_tokens", "batch_size", "padding_side", "chat_template"))
def attention_cmd(
    models: ModelOptions,
    prompts: PromptOptions,
    run: RunOptions,
    tokens: ExtractOptions,
    engine: Engine,
    quiet: Quiet = False,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Layer whose attention to map, repeatable (1..L: the attention of the block "
            "whose output is layer L), or auto: per model, the layer where the two sets differ "
            "most (ranking printed).",
        ),
    ] = None,
    heads: Annotated[
        str,
        typer.Option(
            help="mean (average heads), N (one head, from 0) or all (keep a head dimension)."
        ),
    ] = "mean",
    eager: Annotated[
        bool,
        typer.Option(
            help="Load models with eager attention (default: their fused kernel, "
            "probabilities computed for the mapped layers only)."
        ),
    ] = False,
    floor: Annotated[
        float, typer.Option(help="Smallest probability drawn on the log scale.")
    ] = 1e-10,
    positions: Positions = None,
    min_count: MinCount = 1,
    svg: Annotated[bool, typer.Option(help="Also write attention.svg.")] = False,
):
    """Query × key attention maps (Benign, Jailbreak, Difference of logs) into RUN/trace.zarr and RUN/attention.png|pdf."""  # noqa: E501 (the help text)
    from jbtrace.commands.attention import attention_run

    with progress_bar(quiet) as start:
        results, paths = attention_run(
            prompts,
            models,
            tokens,
            run,
            engine,
            layer=layer,
            heads=heads,
            eager=eager,
            floor=floor,
            positions=positions,
            min_count=min_count,
            svg=svg,
            command=command_line(),
            progress=start,
            note=say,
        )
    for maps in results:
        if maps.divergence:
            ranking = ", ".join(f"{layer} ({value:.3g})" for layer, value in maps.ranking())
            out.print(
                f"{maps.model.name}: layers by JS divergence (bits), largest first: {ranking}",
                highlight=False,
            )
        out.print(
            f"{maps.model.name}: attention of layer {', '.join(map(str, maps.layers))}",
            highlight=False,
        )
    for path in paths:
        out.print(f"wrote {path}", highlight=False)
