"""attention_run: query × key maps for chosen layers into RUN/trace.zarr and RUN/attention.*."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.prompts import check_positions
from jbtrace.errors import UserError
from jbtrace.trace.engine import Engine
from jbtrace.trace.extract import ExtractOptions


def _checkpoint(out: RunOptions, engine: Engine, specs: list, sets, options, **settings):
    """The run directory prepared for these models, sets and settings (resume, refuse a mix)."""
    from jbtrace.trace import runs

    fingerprint = runs.fingerprint(
        "attention",
        [s.identity() for s in specs],
        sets,
        **dataclasses.asdict(options),
        **settings,
        engine=engine.kind,
        shards=engine.shards,
        workers=engine.workers if engine.kind == "ray" else None,
    )
    return runs.prepare(out.out_dir, "attention", fingerprint, out.overwrite, inputs_of="extract")


def attention_run(
    prompts: PromptOptions,
    models: ModelOptions,
    tokens: ExtractOptions | None = None,
    out: RunOptions | None = None,
    engine: Engine | None = None,
    *,
    layer: list[str] | None = None,
    heads: str = "mean",
    eager: bool = False,
    floor: float = 1e-10,
    positions: int | None = None,
    min_count: int = 1,
    svg: bool = False,
    command: str | None = None,
    progress: Callable | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[list, list[Path]]:
    """Map every model's attention into ``out.out_dir``; return the maps and figure paths.

    ``tokens`` gives max_tokens, batch_size, padding_side and chat_template (its statistics
    options are not used); ``progress(description, total)`` returns an ``advance(n)``.
    """
    from jbtrace.trace import attention, store
    from jbtrace.views import plot

    tokens, out, engine = tokens or ExtractOptions(), out or RunOptions(), engine or Engine()
    attn = "eager" if eager else None
    specs = [dataclasses.replace(s, attn_implementation=attn) for s in models.specs(out.seed)]
    layers, head = attention.parse_layers(layer), attention.parse_heads(heads)
    if not 0 < floor < 1:
        raise UserError(f"--floor {floor}: choose a probability between 0 and 1, e.g. 1e-10")
    options = ExtractOptions(
        max_tokens=tokens.max_tokens,
        batch_size=tokens.batch_size,
        padding_side=tokens.padding_side,
        chat_template=tokens.chat_template,
    )
    check_positions(positions, tokens.max_tokens)
    sets = prompts.load(out.seed, note)
    checkpoint = _checkpoint(
        out, engine, specs, sets, options, layers=layers, heads=head, eager=eager
    )
    info = {"command": command, "eager": eager, "limit": prompts.limit, "seed": out.seed}
    results = attention.run(
        out.out_dir,
        specs,
        sets,
        layers=layers,
        heads=head,
        options=options,
        engine=engine,
        checkpoint=checkpoint,
        progress=progress,
        info=info,
    )
    fig = plot.attention_grid(
        store.open_run(out.out_dir),
        models=[m.model.name for m in results],
        positions=positions,
        floor=floor,
        min_count=min_count,
    )
    return results, plot.save(fig, Path(out.out_dir) / "attention", svg=svg)
