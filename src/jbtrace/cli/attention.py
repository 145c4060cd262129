"""attention: query × key maps for chosen layers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import (
    MinCount,
    Positions,
    app,
    check_positions,
    command_line,
    load_prompt_sets,
    model_labels,
    out,
    progress_bar,
)
from jbtrace.cli.run import ENGINE_OPTIONS, with_extract_options
from jbtrace.errors import UserError


@app.command("attention")
@with_extract_options(without=(*ENGINE_OPTIONS, "stat", "align", "bins", "bucket"))
def attention_cmd(
    *,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Layer whose attention to map, repeatable (1..L: the attention of the block whose output is layer L), or auto: per model, the layer where the two sets differ most (ranking printed).",
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
            help="Load models with eager attention (default: their fused kernel, probabilities computed for the mapped layers only)."
        ),
    ] = False,
    floor: Annotated[
        float, typer.Option(help="Smallest probability drawn on the log scale.")
    ] = 1e-10,
    positions: Positions = None,
    min_count: MinCount = 1,
    svg: Annotated[bool, typer.Option(help="Also write attention.svg.")] = False,
    **common,
):
    """Query × key attention maps (Benign, Jailbreak, Difference of logs) into RUN/trace.zarr and RUN/attention.png|pdf."""
    from jbtrace.models import load_model
    from jbtrace.trace import attention, runs, store
    from jbtrace.trace.extract import ExtractOptions
    from jbtrace.views import plot

    if not common["model"]:
        raise UserError("give at least one --model (see `jbtrace models`)")
    layers, head = attention.parse_layers(layer), attention.parse_heads(heads)
    if not 0 < floor < 1:
        raise UserError(f"--floor {floor}: choose a probability between 0 and 1, e.g. 1e-10")
    options = ExtractOptions(
        max_tokens=common["max_tokens"],
        batch_size=common["batch_size"],
        padding_side=common["padding_side"],
        chat_template=common["chat_template"],
    )
    check_positions(positions, common["max_tokens"])
    model, seed, out_dir = common["model"], common["seed"], common["out_dir"]
    specs = list(zip(model, model_labels(model, common["model_name"])))
    sets = load_prompt_sets(common["prompts"], common["text_field"], common["limit"], seed)

    def load(spec, label):
        return load_model(
            spec,
            name=label,
            dtype=common["dtype"],
            device=common["device"],
            revision=common["revision"],
            allow_pickle=common["allow_pickle"],
            trust_remote_code=common["trust_remote_code"],
            seed=seed,
            attn_implementation="eager" if eager else None,
        )

    identity = [
        {"spec": s, "name": n, **{k: common[k] for k in ("dtype", "revision")}, "seed": seed}
        for s, n in specs
    ]
    fingerprint = runs.fingerprint(
        "attention",
        identity,
        sets,
        **dataclasses.asdict(options),
        layers=layers,
        heads=head,
        eager=eager,
    )
    checkpoint = runs.prepare(
        out_dir, "attention", fingerprint, common["overwrite"], inputs_of="extract"
    )
    with progress_bar(common["quiet"]) as start:
        results = attention.run(
            out_dir,
            load,
            specs,
            sets,
            layers=layers,
            heads=head,
            options=options,
            progress=start,
            info={
                "command": command_line(),
                "eager": eager,
                "limit": common["limit"],
                "seed": seed,
            },
            checkpoint=checkpoint,
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
    fig = plot.attention_grid(
        store.open_run(out_dir),
        models=[m.model.name for m in results],
        positions=positions,
        floor=floor,
        min_count=min_count,
    )
    for path in plot.save(fig, Path(out_dir) / "attention", svg=svg):
        out.print(f"wrote {path}", highlight=False)
