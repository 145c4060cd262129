"""attention_run: query × key maps for chosen layers into RUN/trace.zarr and RUN/attention.*."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from jbtrace.commands.prompts import check_positions, load_prompt_sets
from jbtrace.errors import UserError


def _checkpoint(common: dict, specs: list, sets, options, **settings):
    """The run directory prepared for these models, sets and settings (resume, refuse a mix)."""
    from jbtrace.trace import runs

    engine = common["engine"]
    fingerprint = runs.fingerprint(
        "attention",
        [s.identity() for s in specs],
        sets,
        **dataclasses.asdict(options),
        **settings,
        engine=engine,
        shards=common["shards"],
        workers=common["workers"] if engine == "ray" else None,
    )
    return runs.prepare(
        common["out_dir"], "attention", fingerprint, common["overwrite"], inputs_of="extract"
    )


def attention_run(
    common: dict,
    *,
    layer: list[str] | None = None,
    heads: str = "mean",
    eager: bool = False,
    floor: float = 1e-10,
    positions: int | None = None,
    min_count: int = 1,
    svg: bool = False,
    command: str | None = None,
    progress: Callable[[], contextlib.AbstractContextManager] | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[list, list[Path]]:
    """Map every model's attention into ``common["out_dir"]``; return the maps and figure paths.

    ``common`` holds the extract options the CLI parsed (model, prompts, max_tokens, ...);
    ``progress()`` opens the progress display (yielding ``start(description, total)``).
    """
    from jbtrace.commands.extract import _model_specs
    from jbtrace.trace import attention, store
    from jbtrace.trace.engine import Engine
    from jbtrace.trace.extract import ExtractOptions
    from jbtrace.views import plot

    load = ("dtype", "device", "revision", "allow_pickle", "trust_remote_code", "seed")
    specs = _model_specs(
        common["model"],
        common["model_name"],
        **{k: common[k] for k in load},
        attn_implementation="eager" if eager else None,
    )
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
    seed, out_dir = common["seed"], common["out_dir"]
    engine = Engine(
        common["engine"],
        ray_address=common["ray_address"],
        workers=common["workers"],
        shards=common["shards"],
    )
    sets = load_prompt_sets(
        common["prompts"], common["text_field"], common["limit"], seed, note=note
    )
    checkpoint = _checkpoint(common, specs, sets, options, layers=layers, heads=head, eager=eager)
    info = {"command": command, "eager": eager, "limit": common["limit"], "seed": seed}
    with (progress or contextlib.nullcontext)() as start:
        results = attention.run(
            out_dir,
            specs,
            sets,
            layers=layers,
            heads=head,
            options=options,
            engine=engine,
            checkpoint=checkpoint,
            progress=start,
            info=info,
        )
    fig = plot.attention_grid(
        store.open_run(out_dir),
        models=[m.model.name for m in results],
        positions=positions,
        floor=floor,
        min_count=min_count,
    )
    return results, plot.save(fig, Path(out_dir) / "attention", svg=svg)
