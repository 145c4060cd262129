"""attention_run: query × key maps for chosen layers into RUN/trace.zarr and RUN/attention.*."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from jbtrace.commands.prompts import check_positions, load_prompt_sets, model_labels
from jbtrace.errors import UserError


def _loader(common: dict, eager: bool) -> Callable:
    """``load(spec, label)``: one model as the extract options in ``common`` say."""
    from jbtrace.models import load_model

    def load(spec, label):
        return load_model(
            spec,
            name=label,
            dtype=common["dtype"],
            device=common["device"],
            revision=common["revision"],
            allow_pickle=common["allow_pickle"],
            trust_remote_code=common["trust_remote_code"],
            seed=common["seed"],
            attn_implementation="eager" if eager else None,
        )

    return load


def _checkpoint(common: dict, specs: list[tuple[str, str]], sets, options, **settings):
    """The run directory prepared for these models, sets and settings (resume, refuse a mix)."""
    from jbtrace.trace import runs

    seed = common["seed"]
    identity = [
        {"spec": s, "name": n, **{k: common[k] for k in ("dtype", "revision")}, "seed": seed}
        for s, n in specs
    ]
    fingerprint = runs.fingerprint(
        "attention", identity, sets, **dataclasses.asdict(options), **settings
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
    from jbtrace.trace import attention, store
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
    specs = list(zip(model, model_labels(model, common["model_name"]), strict=True))
    sets = load_prompt_sets(
        common["prompts"], common["text_field"], common["limit"], seed, note=note
    )
    checkpoint = _checkpoint(common, specs, sets, options, layers=layers, heads=head, eager=eager)
    info = {"command": command, "eager": eager, "limit": common["limit"], "seed": seed}
    with (progress or contextlib.nullcontext)() as start:
        results = attention.run(
            out_dir,
            _loader(common, eager),
            specs,
            sets,
            layers=layers,
            heads=head,
            options=options,
            progress=start,
            info=info,
            checkpoint=checkpoint,
        )
    fig = plot.attention_grid(
        store.open_run(out_dir),
        models=[m.model.name for m in results],
        positions=positions,
        floor=floor,
        min_count=min_count,
    )
    return results, plot.save(fig, Path(out_dir) / "attention", svg=svg)
