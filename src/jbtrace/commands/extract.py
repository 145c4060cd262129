"""extract: from prompt sets and models to RUN/trace.zarr and RUN/run.json (`jbtrace extract`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions

if TYPE_CHECKING:
    from jbtrace.trace.engine import Engine
    from jbtrace.trace.extract import ExtractOptions


def _silent(description, total):
    return lambda n: None


def _ignore(line):
    return None


def extract_run(
    prompts: PromptOptions,
    models: ModelOptions,
    options: ExtractOptions | None = None,
    out: RunOptions | None = None,
    engine: Engine | None = None,
    *,
    command: str | None = None,
    name: str = "extract",
    progress=None,
    note=None,
):
    """The whole of `jbtrace extract` (prompts, models, resumable extraction, RUN/trace.zarr,
    run.json, prompts.jsonl); ``options`` default to ExtractOptions(), ``out`` to RunOptions(),
    ``engine`` to the local one. Reports via ``progress(what, total)->advance``, ``note(line)``."""
    from jbtrace.trace import runs, store
    from jbtrace.trace.engine import Engine, extract_models
    from jbtrace.trace.extract import ExtractOptions

    options, out, engine = options or ExtractOptions(), out or RunOptions(), engine or Engine()
    specs = models.specs(out.seed)
    sets = prompts.load(out.seed, note)
    fingerprint = runs.fingerprint(
        name,
        [s.identity() for s in specs],
        sets,
        **dataclasses.asdict(options),
        engine=engine.kind,
        shards=engine.shards,
        workers=engine.workers if engine.kind == "ray" else None,
    )
    checkpoint = runs.prepare(out.out_dir, "extract", fingerprint, out.overwrite)
    traces = extract_models(specs, sets, options, engine, checkpoint, progress=progress or _silent)
    ds = store.build(
        traces,
        sets,
        extra={"command": command, "seed": out.seed, "limit": prompts.limit, "engine": engine.kind},
    )
    _write(ds, sets, out.out_dir, command, out.seed)
    checkpoint.clear()
    _note_models(store.provenance(ds), options.max_tokens, note or _ignore)
    return ds


def _note_models(summary: dict, max_tokens: int, note) -> None:
    """One line per model: how many prompts were truncated, padding waste, non-finite values."""
    for name, info in summary["models"].items():
        truncated = ", ".join(f"{k} {v}" for k, v in info["truncated"].items())
        nonfinite = sum(info["nonfinite"].values())
        note(
            f"{name}: truncated to {max_tokens} tokens: {truncated}; padding waste "
            f"{info['padding_waste']:.1%}"
            + (f"; {nonfinite} non-finite values excluded" if nonfinite else ""),
        )


def _write(ds, sets, out_dir, command, seed) -> None:
    """Publish RUN/trace.zarr, RUN/run.json and RUN/prompts.jsonl (the texts the report shows)."""
    from jbtrace.prompts.sample import write_sample
    from jbtrace.trace import runs, store
    from jbtrace.trace.checkpoint import atomic_write

    path = store.write(ds, out_dir)
    run_json = json.dumps(
        {
            "command": command,
            "store": str(path),
            "provenance": store.provenance(ds),
            "jbtrace": runs.SIGNATURE,
        },
        indent=2,
    )
    atomic_write(Path(out_dir) / "run.json", lambda p: p.write_text(run_json))
    write_sample(sets, out_dir, seed=seed)
