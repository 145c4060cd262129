"""What the commands share: prompt sets from NAME=SOURCE specs, model labels, --shard K/N,
--positions checked before any model runs."""

from __future__ import annotations

from jbtrace.errors import UserError
from jbtrace.models.presets import DEMO_PROMPTS


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/2") from None
    return k, n


def load_prompt_sets(prompts, text_field, limit, seed, note=None):
    """Load NAME=SOURCE sets (default: the demo's); ``note(line)`` hears what each set holds."""
    from jbtrace.prompts import load_prompts, parse_prompt_specs

    sets = [
        load_prompts(name, source, text_field=text_field, limit=limit, seed=seed)
        for name, source in parse_prompt_specs(prompts or DEMO_PROMPTS)
    ]
    for ps in sets:
        notes = [
            f"{ps.info[k]} {what}"
            for k, what in (
                ("empty_removed", "empty removed"),
                ("duplicates_removed", "duplicates removed"),
            )
            if ps.info.get(k)
        ]
        (note or (lambda line: None))(
            f"{ps.name}: {len(ps)} prompts from {ps.source}"
            + (f" ({', '.join(notes)})" if notes else ""),
        )
    return sets


def model_labels(models: list[str], names: list[str] | None) -> list[str | None]:
    if names and len(names) != len(models):
        raise UserError(f"--model-name given {len(names)} times for {len(models)} --model")
    return list(names) if names else [None] * len(models)


def check_positions(positions: str | None, max_tokens: int) -> None:
    """Fail on a --positions range no run with this --max-tokens can have, before any model runs."""
    if positions:
        import numpy as np
        import xarray as xr

        from jbtrace.views.plot import parse_range

        parse_range(positions, xr.DataArray(np.arange(max_tokens)), "positions")


def pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """NAME=VALUE options (e.g. --label NAME=benign) as a dict; one-line error otherwise."""
    found = {}
    for value in values or []:
        name, eq, right = value.partition("=")
        if not eq or not name or not right:
            raise UserError(f"{what} {value!r}: expected NAME=VALUE")
        found[name] = right
    return found
