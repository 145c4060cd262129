"""Attention maps in the run's store: ``attn_mean`` / ``attn_count`` (and ``attn_divergence``
after ``--layer auto``) as one Dataset, written into RUN/trace.zarr beside an extract's grid.

See ``attention`` for what the maps are.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

import jbtrace
from jbtrace.errors import UserError
from jbtrace.prompts import PromptSet
from jbtrace.trace import runs, store

VARIABLES = ("attn_mean", "attn_count", "attn_divergence")
DIMS = ("attn_layer", "head", "query", "key")


def _grids(all_maps: list, scenarios: list[str], layers: list[int], n_pos: int):
    """Mean and count (model, scenario, layer, head, query, key) and divergence (model, layer)."""
    n_head = max(m.n_heads for m in all_maps) if all_maps[0].heads == "all" else 1
    shape = (len(all_maps), len(scenarios), len(layers), n_head, n_pos, n_pos)
    mean, count = np.full(shape, np.nan), np.zeros(shape[:3] + shape[4:], np.int64)
    n_layers = max(m.model.n_layers for m in all_maps)
    divergence = np.full((len(all_maps), n_layers), np.nan)
    for i, maps in enumerate(all_maps):
        for j, scenario in enumerate(scenarios):
            values = maps.mean(scenario)[..., :n_pos, :n_pos]
            counts = maps.counts[scenario].cpu().numpy()[:n_pos, :n_pos].astype(np.int64)
            for slot, layer in enumerate(maps.layers):
                mean[i, j, layers.index(layer), : values.shape[1]] = values[slot]
                count[i, j, layers.index(layer)] = counts
        for layer, value in (maps.divergence or {}).items():
            divergence[i, layer] = value
    return mean, count, divergence


def to_dataset(
    all_maps: list, prompt_sets: list[PromptSet], info: dict | None = None
) -> xr.Dataset:
    """The attention variables of several models as one Dataset.

    Cropped to the positions any prompt reached.
    """
    scenarios = [p.name for p in prompt_sets]
    layers = sorted({layer for m in all_maps for layer in m.layers})
    keep_heads = all_maps[0].heads == "all"
    reached = [
        np.flatnonzero(m.counts[s].cpu().numpy().any(1)) for m in all_maps for s in scenarios
    ]
    n_pos = max((int(r.max()) + 1 for r in reached if r.size), default=1)
    mean, count, divergence = _grids(all_maps, scenarios, layers, n_pos)
    n_head, n_layers = mean.shape[3], divergence.shape[1]
    cell = ("model", "scenario", "attn_layer", "head", "query", "key")
    if not keep_heads:
        mean, cell = mean[:, :, :, 0], tuple(d for d in cell if d != "head")
    data = {
        "attn_mean": (
            cell,
            mean,
            {
                "heads": str(all_maps[0].heads),
                "description": "mean attention probability over prompts (and heads unless kept)",
            },
        ),
        "attn_count": (
            ("model", "scenario", "attn_layer", "query", "key"),
            count,
            {
                "description": "prompts in which both tokens are real "
                "and the key is visible to the query"
            },
        ),
    }
    if any(m.divergence for m in all_maps):
        data["attn_divergence"] = (
            ("model", "layer"),
            divergence,
            {
                "description": "mean Jensen-Shannon divergence (bits) between the two scenarios' "
                "mean attention rows (head mean), per layer"
            },
        )
    coords = {
        "model": [m.model.name for m in all_maps],
        "scenario": scenarios,
        "attn_layer": layers,
        "query": np.arange(n_pos),
        "key": np.arange(n_pos),
        "model_label": ("model", [m.model.label for m in all_maps]),
        "random_init": ("model", [m.model.random_init for m in all_maps]),
    }
    if keep_heads:
        coords["head"] = np.arange(n_head)
    if "attn_divergence" in data:
        coords["layer"] = np.arange(n_layers)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["attention"] = json.dumps(
        {
            "jbtrace_version": jbtrace.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "heads": str(all_maps[0].heads),
            "layers": {m.model.name: m.layers for m in all_maps},
            "ranking": {m.model.name: m.ranking() for m in all_maps if m.divergence},
            "measure": "mean over query positions of the Jensen-Shannon divergence (bits) "
            "between the scenarios' mean attention rows, restricted to keys with data in both "
            "and renormalised",
            "align": "start",
            "models": {m.model.name: m.model.provenance for m in all_maps},
            "prompt_sets": sets_info(prompt_sets),
            **(info or {}),
        }
    )
    return ds


def save(ds: xr.Dataset, run_dir: str | Path) -> Path:
    """Put the attention variables into RUN/trace.zarr, replacing earlier ones (or a new store)."""
    path = store.store_path(run_dir)
    if path is None:
        ds = ds.assign_attrs(
            provenance=json.dumps(
                {"jbtrace_version": jbtrace.__version__, **json.loads(ds.attrs["attention"])}
            )
        )
        return store.write(ds, run_dir)
    run = store.open_run(run_dir)
    runs.check_same_inputs(store.provenance(run), json.loads(ds.attrs["attention"]), str(path))
    if "mean" not in run:  # a store only attention wrote: replace it
        return save(ds, _fresh(run_dir))
    for dim in ("model", "scenario"):
        extra = [str(v) for v in ds[dim].values if v not in run[dim].values]
        if extra:
            raise UserError(
                f"{dim} {', '.join(extra)} is not in {path} "
                f"(it has {', '.join(map(str, run[dim].values))}): "
                f"use the same names as the extract that wrote it, or another --out"
            )
    run = run.drop_vars([v for v in (*VARIABLES, *DIMS) if v in run.variables])
    ds = ds.drop_vars(["model_label", "random_init"]).reindex(
        model=run.model, scenario=run.scenario
    )
    ds["attn_count"] = ds["attn_count"].fillna(0).astype(np.int64)
    merged = run.merge(ds, join="left")
    merged.attrs = {**run.attrs, "attention": ds.attrs["attention"]}
    return store.write(merged, run_dir)


def _fresh(run_dir) -> Path:
    """Remove an attention-only store so that ``save`` writes a new one."""
    shutil.rmtree(Path(run_dir) / store.STORE)
    return Path(run_dir)


def sets_info(prompt_sets: list[PromptSet]) -> list[dict]:
    return [
        {"name": p.name, "source": p.source, "sha256": p.sha256, "size": len(p)}
        for p in prompt_sets
    ]
