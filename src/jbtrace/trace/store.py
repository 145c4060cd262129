"""The trace store: ``RUN/trace.zarr``, an xarray Dataset any xarray user can open.

Variables ``mean``, ``var`` (ddof=1), ``count`` and ``nonfinite`` have dims
(model, scenario, stat, layer, position); a layer a model lacks has count 0 and NaN
mean. Per-prompt pooled values ``prompt_value`` (model, stat, prompt, layer), per-prompt
slopes over position ``prompt_slope`` (same dims) and token counts ``prompt_tokens``
(model, prompt) feed the prompt-level permutation tests. Provenance is
JSON in the attribute ``provenance``. Writes go to a temporary folder first and are
renamed into place, so a failed run never leaves a store that looks complete.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import jbtrace
from jbtrace import publish
from jbtrace.errors import UserError
from jbtrace.trace import hooks, runs
from jbtrace.trace.accumulate import Moments
from jbtrace.trace.extract import ModelTrace

STORE = "trace.zarr"
OLD_STORE = "trace.zarr.old"  # the previous store, only between the two renames of a publish
CELL_DIMS = ("model", "scenario", "stat", "layer", "position")


def build(traces: list[ModelTrace], prompt_sets, extra: dict | None = None) -> xr.Dataset:
    """One Dataset from the traces of several models over the same prompt sets."""
    options = traces[0].options
    scenarios = [p.name for p in prompt_sets]
    n_layers = max(t.model.n_layers for t in traces)
    n_pos = max(t.n_positions for t in traces)
    shape = (len(traces), len(scenarios), len(options.stats), n_layers, n_pos)
    mean, var = np.full(shape, np.nan), np.full(shape, np.nan)
    count, nonfinite = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    index = {p.name: traces[0].scenarios[p.name].prompt_index for p in prompt_sets}
    n_prompts = sum(len(i) for i in index.values())
    prompt_value = np.full((len(traces), len(options.stats), n_prompts, n_layers), np.nan)
    prompt_slope = np.full_like(prompt_value, np.nan)
    prompt_tokens = np.zeros((len(traces), n_prompts), np.int64)
    prompt_truncated = np.zeros((len(traces), n_prompts), bool)
    for m, trace in enumerate(traces):
        L, P, start = trace.model.n_layers, trace.n_positions, 0
        for s, prompt_set in enumerate(prompt_sets):
            st = trace.scenarios[prompt_set.name]
            cells = (len(options.stats), L, P)
            mean[m, s, :, :L, :P] = st.moments.mean.view(cells).cpu().numpy()
            var[m, s, :, :L, :P] = st.moments.variance().view(cells).cpu().numpy()
            count[m, s, :, :L, :P] = st.moments.count.view(cells).cpu().numpy()
            nonfinite[m, s, :, :L, :P] = st.moments.nonfinite.view(cells).cpu().numpy()
            rows = slice(start, start + len(index[prompt_set.name]))
            prompt_value[m, :, rows, :L] = st.prompt_values.transpose(0, 2, 1)
            prompt_slope[m, :, rows, :L] = st.prompt_slope.transpose(0, 2, 1)
            prompt_tokens[m, rows] = st.prompt_tokens
            prompt_truncated[m, rows] = st.truncated
            start += len(index[prompt_set.name])
    mean[count == 0] = np.nan
    reached = np.flatnonzero(count.any(axis=(0, 1, 2, 3)))
    n_pos = int(reached.max()) + 1 if reached.size else 1  # positions no prompt reaches are dropped
    mean, var, count, nonfinite = (a[..., :n_pos] for a in (mean, var, count, nonfinite))
    ds = xr.Dataset(
        {
            "mean": (CELL_DIMS, mean),
            "var": (CELL_DIMS, var),
            "count": (CELL_DIMS, count),
            "nonfinite": (CELL_DIMS, nonfinite),
            "prompt_value": (("model", "stat", "prompt", "layer"), prompt_value),
            "prompt_slope": (("model", "stat", "prompt", "layer"), prompt_slope),
            "prompt_tokens": (("model", "prompt"), prompt_tokens),
            "prompt_truncated": (("model", "prompt"), prompt_truncated),
        },
        coords={
            "model": [t.model.name for t in traces],
            "scenario": scenarios,
            "stat": list(options.stats),
            "layer": np.arange(n_layers),
            "position": np.arange(n_pos),
            "prompt": np.arange(n_prompts),
            "prompt_scenario": ("prompt", [name for name, i in index.items() for _ in i]),
            "prompt_index": ("prompt", np.concatenate(list(index.values()))),
            "model_label": ("model", [t.model.label for t in traces]),
            "random_init": ("model", [t.model.random_init for t in traces]),
        },
    )
    ds.attrs["provenance"] = json.dumps(_provenance(traces, prompt_sets, extra or {}))
    ds.attrs["align"] = options.align
    ds.attrs["conventions"] = "layer 0 = embedding output; difference = scenario[1] - scenario[0]"
    return ds


def _provenance(traces, prompt_sets, extra) -> dict:
    options = traces[0].options
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {
        "jbtrace_version": jbtrace.__version__,
        "created": now,
        "models": {
            t.model.name: {
                **t.model.provenance,
                "truncated": {k: int(v.truncated.sum()) for k, v in t.scenarios.items()},
                "nonfinite": {k: int(v.moments.nonfinite.sum()) for k, v in t.scenarios.items()},
                "padding_waste": round(t.padding_waste, 4),
                "chat_template": t.options.chat_template,
            }
            for t in traces
        },
        "prompt_sets": [
            {"name": p.name, "source": p.source, "sha256": p.sha256, "size": len(p), "info": p.info}
            for p in prompt_sets
        ],
        "statistics": list(options.stats),
        "align": options.align,
        "bins": options.bins if options.align == "relative" else None,
        "max_tokens": options.max_tokens,
        "padding_side": options.padding_side,
        "bucket": options.bucket,
        "chat_template": {t.model.name: t.options.chat_template for t in traces},
        "shard": list(options.shard),
        **extra,
    }


def provenance(ds: xr.Dataset) -> dict:
    return json.loads(ds.attrs.get("provenance", "{}"))


def write(ds: xr.Dataset, run_dir: str | Path) -> Path:
    """Write ``RUN/trace.zarr`` so that a complete store, the old or the new one, exists at
    every instant.

    The new store is written in a staging folder; the old one is renamed aside to
    ``trace.zarr.old`` and the new one renamed into place; only then is the old one removed
    (``publish.swap_in``).
    ``open_run`` reads ``trace.zarr.old`` if a crash fell between the two renames.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target, old = run_dir / STORE, run_dir / OLD_STORE
    tmp = publish.staging_folder(run_dir, "trace") / STORE
    try:
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
        hooks.reached("publish")
        publish.swap_in(tmp, target, old)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return target


def store_path(run_dir: str | Path) -> Path | None:
    """The run's complete store: ``trace.zarr``, or the old one a crash left renamed aside; None
    if neither."""
    for name in (STORE, OLD_STORE):
        if (Path(run_dir) / name).is_dir():
            return Path(run_dir) / name
    return None


def open_run(run_dir: str | Path) -> xr.Dataset:
    """Load a run's store into memory."""
    path = store_path(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no {STORE} here (run `jbtrace extract` first)")
    try:
        with xr.open_zarr(path) as ds:
            return ds.load()
    except Exception as error:  # zarr and xarray raise many kinds for a damaged store
        why = ": ".join([type(error).__name__, *str(error).splitlines()[:1]])
        raise UserError(
            f"{path}: cannot read the store ({why}); "
            "rerun the command that wrote it with --overwrite"
        ) from None


def update(run_dir: str | Path, variables: xr.Dataset) -> None:
    """Add or replace variables in a run's store (e.g. comparison results), rewriting it
    atomically."""
    ds = open_run(run_dir)
    kept = ds.drop_vars([v for v in variables.data_vars if v in ds], errors="ignore")
    write(kept.merge(variables, compat="override", join="outer"), run_dir)


def merge(shards: list[xr.Dataset]) -> xr.Dataset:
    """Combine the stores of shards K/N (K = 0..N-1, each once) of one run into the store of the
    whole run.

    Shards with different inputs (prompt sets, models, statistics, alignment, max_tokens, ...)
    or overlapping prompts are refused (``runs.check_mergeable``).
    """
    n_pos = max(s.sizes["position"] for s in shards)
    shards = [
        s.reindex(position=np.arange(n_pos), fill_value={"count": 0, "nonfinite": 0})
        for s in shards
    ]
    first = shards[0]
    runs.check_mergeable(
        [provenance(s) for s in shards],
        [
            list(
                zip(
                    s["prompt_scenario"].values.tolist(),
                    s["prompt_index"].values.tolist(),
                    strict=True,
                )
            )
            for s in shards
        ],
    )
    for other in shards[1:]:
        for dim in ("model", "scenario", "stat", "layer"):
            if not np.array_equal(first[dim].values, other[dim].values):
                raise UserError(f"cannot merge: the shards differ in {dim}")
    totals = None
    for shard in shards:
        moments = _moments(shard)
        if totals is None:
            totals = moments
        else:
            totals.merge(moments)
    shape = first["count"].shape
    count = totals.count.view(shape).numpy().astype(np.int64)
    mean = np.where(count > 0, totals.mean.view(shape).numpy(), np.nan)
    prompts = xr.concat(
        [s.drop_vars(list(s.data_vars.keys() - _PROMPT_VARS)) for s in shards], dim="prompt"
    )
    order = np.lexsort(
        (
            prompts["prompt_index"].values,
            [list(first.scenario.values).index(x) for x in prompts["prompt_scenario"].values],
        )
    )
    prompts = prompts.isel(prompt=order).assign_coords(prompt=np.arange(len(order)))
    out = xr.Dataset(
        {
            "mean": (CELL_DIMS, mean),
            "var": (CELL_DIMS, totals.variance().view(shape).numpy()),
            "count": (CELL_DIMS, count),
            "nonfinite": (CELL_DIMS, totals.nonfinite.view(shape).numpy()),
        },
        coords={k: v for k, v in first.coords.items() if "prompt" not in v.dims},
    ).merge(prompts)
    out.attrs = dict(first.attrs)
    out.attrs["provenance"] = json.dumps(
        {**provenance(first), "shard": [0, 1], "merged_from": [provenance(s) for s in shards]}
    )
    return out


_PROMPT_VARS = {"prompt_value", "prompt_slope", "prompt_tokens", "prompt_truncated"}


def _moments(ds: xr.Dataset) -> Moments:
    count = torch.from_numpy(ds["count"].values.astype(np.float64).reshape(-1))
    moments = Moments(count.numel())
    moments.count = count
    moments.mean = torch.from_numpy(np.nan_to_num(ds["mean"].values.reshape(-1)))
    moments.m2 = torch.from_numpy(
        np.nan_to_num(ds["var"].values.reshape(-1)) * (count.numpy() - 1).clip(min=0)
    )
    moments.nonfinite = torch.from_numpy(ds["nonfinite"].values.reshape(-1).astype(np.int64))
    return moments
