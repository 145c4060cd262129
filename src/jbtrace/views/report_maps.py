"""The report's numbers: heatmaps and attention maps pooled to what a page can draw, rounded.

Heatmaps carry scenario means and counts, their difference and the comparison's per-cell
variables; attention maps the log10 mean probability per scenario. Long maps are pooled into
bins of equal width (count-weighted means); every number is rounded to DIGITS digits.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

# heatmap positions drawn per model; longer runs are pooled into bins of equal width
MAX_COLUMNS = 512
# heatmap cells drawn over all models and statistics (the demo draws 52k); more are pooled
MAX_CELLS = 250_000
MAX_ATTENTION = 128  # query and key positions drawn per attention map
ATTN_FLOOR = 1e-10  # smallest probability drawn on the log scale (as `jbtrace attention --floor`)
DIGITS = 4  # significant digits of the numbers handed to the page


def compact(values) -> list:
    """Nested lists rounded to DIGITS significant digits; NaN and infinities become null."""
    arr = np.asarray(values, dtype=float)
    flat = [
        None if not math.isfinite(v) else float(f"{v:.{DIGITS}g}") for v in arr.ravel().tolist()
    ]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def pool(
    mean: np.ndarray, count: np.ndarray, axis: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count-weighted means over bins of ``width`` along ``axis``, and the largest count per bin.

    A bin's mean is the mean of every value in the bin; width 1 returns the input.
    """
    if width == 1:
        return mean, count
    n = count.shape[axis]
    edges = np.arange(0, n, width)
    weighted = np.add.reduceat(np.where(count > 0, mean * count, 0.0), edges, axis=axis)
    total = np.add.reduceat(count, edges, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / total, np.nan), np.maximum.reduceat(
            count, edges, axis=axis
        )


def _extent(count: np.ndarray) -> int:
    """Positions up to the last one with any count (at least 1)."""
    seen = np.flatnonzero(count.reshape(-1, count.shape[-1]).sum(axis=0) > 0)
    return int(seen[-1]) + 1 if seen.size else 1


def heatmaps(ds: xr.Dataset) -> dict:
    """Per statistic and model: scenario means and counts, the difference, and the comparison's
    per-cell variables."""
    a, b = (str(s) for s in ds.scenario.values[:2])
    cells = [v for v in ("g", "q", "ci_low", "ci_high", "significant") if v in ds]
    out = {"scenarios": [a, b], "stats": [str(s) for s in ds.stat.values], "models": [], "maps": {}}
    budget = math.ceil(
        int((ds["count"].sel(scenario=[a, b]).sum("scenario") > 0).sum()) / MAX_CELLS
    )
    for model in map(str, ds.model.values):
        sub = ds.sel(model=model)
        label = str(sub["model_label"].values) if "model_label" in sub.coords else model
        out["models"].append({"name": model, "label": label})
        for stat in out["stats"]:
            cell = sub.sel(stat=stat)
            count = cell["count"].sel(scenario=[a, b]).values
            layers = np.flatnonzero(count.sum(axis=(0, 2)) > 0)
            if layers.size == 0:
                continue
            extent = _extent(count)
            width = max(math.ceil(extent / MAX_COLUMNS), budget)
            count = count[:, layers, :extent]
            mean = cell["mean"].sel(scenario=[a, b]).values[:, layers, :extent]
            mean, count = pool(mean, count, axis=2, width=width)
            entry = {
                "layers": ds.layer.values[layers].tolist(),
                "positions": list(range(0, extent, width)),
                "width": width,
                "a": compact(mean[0]),
                "b": compact(mean[1]),
                "na": count[0].tolist(),
                "nb": count[1].tolist(),
            }
            entry["diff"] = compact(
                np.where((count[0] > 0) & (count[1] > 0), mean[1] - mean[0], np.nan)
            )
            if "significant" in cells:
                sig = cell["significant"].values[layers, :extent].astype(float)
                entry["sig"] = (
                    np.maximum.reduceat(sig, np.arange(0, extent, width), axis=1)
                    .astype(int)
                    .tolist()
                )
            if width == 1:  # per-cell statistics only where cells are drawn one by one
                for name in ("g", "q", "ci_low", "ci_high"):
                    if name in cells:
                        entry[name] = compact(cell[name].values[layers, :extent])
            elif "q" in cells:
                q = np.nan_to_num(cell["q"].values[layers, :extent], nan=np.inf)
                entry["q_min"] = compact(
                    np.minimum.reduceat(q, np.arange(0, extent, width), axis=1)
                )
            out["maps"].setdefault(stat, {})[model] = entry
    return out


def attention(ds: xr.Dataset) -> dict:
    """Per model and attention layer: log10 mean probability per scenario, difference, counts."""
    a, b = (str(s) for s in ds.scenario.values[:2])
    maps = []
    mean_all, count_all = ds["attn_mean"], ds["attn_count"]
    heads = "head" in mean_all.dims
    for model in map(str, ds.model.values):
        for layer in ds.attn_layer.values.tolist():
            mean = mean_all.sel(model=model, attn_layer=layer, scenario=[a, b])
            count = count_all.sel(model=model, attn_layer=layer, scenario=[a, b])
            if heads:  # the page shows the head mean; the store keeps every head
                count = count.max("head")
                mean = mean.mean("head")
            mean, count = mean.values, count.values
            if count.sum() == 0:
                continue
            n = max(_extent(count), _extent(count.transpose(0, 2, 1)))
            width = math.ceil(n / MAX_ATTENTION)
            mean, count = mean[:, :n, :n], count[:, :n, :n]
            for axis in (1, 2):
                mean, count = pool(mean, count, axis=axis, width=width)
            logs = np.where(count > 0, np.log10(np.maximum(mean, ATTN_FLOOR)), np.nan)
            both = (count[0] > 0) & (count[1] > 0)
            maps.append(
                {
                    "model": model,
                    "layer": layer,
                    "positions": list(range(0, n, width)),
                    "width": width,
                    "a": compact(logs[0]),
                    "b": compact(logs[1]),
                    "diff": compact(np.where(both, logs[1] - logs[0], np.nan)),
                    "na": count[0].tolist(),
                    "nb": count[1].tolist(),
                }
            )
    return (
        {"scenarios": [a, b], "maps": maps, "heads": "mean over heads" if heads else None}
        if maps
        else None
    )
