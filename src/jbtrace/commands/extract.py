"""extract: from prompt sets and models to RUN/trace.zarr and RUN/run.json (`jbtrace extract`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jbtrace.commands.prompts import load_prompt_sets, model_labels, parse_shard
from jbtrace.errors import UserError


def _silent(description, total):
    return lambda n: None


def _ignore(line):
    return None


def extract_run(
    *,
    prompts,
    text_field,
    limit,
    seed,
    model,
    model_name,
    dtype,
    device,
    revision,
    allow_pickle,
    trust_remote_code,
    stat,
    align,
    bins,
    max_tokens,
    batch_size,
    padding_side,
    bucket,
    chat_template,
    shard,
    progress=None,
    note=None,
    out_dir,
    command,
    engine="local",
    ray_address=None,
    workers=None,
    shards=None,
    overwrite=False,
    name="extract",
):
    """The whole of `jbtrace extract` (prompts, models, resumable extraction, RUN/trace.zarr,
    run.json, prompts.jsonl); reports via ``progress(what, total)->advance``, ``note(line)``."""
    from jbtrace.trace import runs, store
    from jbtrace.trace.engine import Engine, extract_models
    from jbtrace.trace.extract import ExtractOptions

    options = ExtractOptions(
        stats=tuple(stat or ["log_norm"]),
        align=align,
        bins=bins,
        max_tokens=max_tokens,
        batch_size=batch_size,
        padding_side=padding_side,
        bucket=bucket,
        chat_template=chat_template,
        shard=parse_shard(shard),
    )
    where = Engine(engine, ray_address=ray_address, workers=workers, shards=shards)
    specs = _model_specs(
        model,
        model_name,
        dtype=dtype,
        device=device,
        revision=revision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        seed=seed,
    )
    sets = load_prompt_sets(prompts, text_field, limit, seed, note)
    fingerprint = runs.fingerprint(
        name,
        [s.identity() for s in specs],
        sets,
        **dataclasses.asdict(options),
        engine=engine,
        shards=shards,
        workers=workers if engine == "ray" else None,
    )
    checkpoint = runs.prepare(out_dir, "extract", fingerprint, overwrite)
    traces = extract_models(specs, sets, options, where, checkpoint, progress=progress or _silent)
    ds = store.build(
        traces, sets, extra={"command": command, "seed": seed, "limit": limit, "engine": engine}
    )
    _write(ds, sets, out_dir, command, seed)
    checkpoint.clear()
    _note_models(store.provenance(ds), max_tokens, note or _ignore)
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


def _model_specs(model, model_name, **load) -> list:
    """One engine ModelSpec per --model, labelled by --model-name."""
    from jbtrace.trace.engine import ModelSpec

    if not model:
        raise UserError("give at least one --model (see `jbtrace models`)")
    labels = model_labels(model, model_name)
    return [ModelSpec(spec, label, **load) for spec, label in zip(model, labels, strict=True)]


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
