"""Static figures from the trace store. Every function returns a matplotlib Figure; nothing is shown."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from jbtrace.errors import UserError  # noqa: E402

MASK_COLOUR = "#d9d9d9"
SEQUENTIAL, DIVERGING = "viridis", "RdBu_r"
POSITION_LABELS = {"start": "Token Positions", "end": "Token Positions (from the end)", "relative": "Relative Position (bin)"}


def parse_range(text: str | None, coord: xr.DataArray, what: str) -> slice | None:
    """``"0:448"`` → a slice of coordinate values (end exclusive); out of range is a user error."""
    if not text:
        return None
    try:
        lo, hi = (int(x) if x else None for x in text.split(":"))
    except ValueError:
        raise UserError(f"--{what} {text!r}: expected START:END, e.g. 0:448") from None
    first, last = int(coord.values[0]), int(coord.values[-1])
    lo = first if lo is None else lo
    hi = last + 1 if hi is None else hi
    if not (first <= lo < hi <= last + 1):
        raise UserError(f"--{what} {text!r} is out of range: this run has {what} {first}..{last}")
    return slice(lo, hi - 1)


def ticks(n: int, preferred: int) -> np.ndarray:
    """Tick positions every ``preferred`` cells when that gives at least two ticks, else a smaller round step."""
    step = preferred
    while step > 1 and n // step < 2:
        step //= 2
    return np.arange(0, n, max(step, 1))


def cell_panels(ds: xr.Dataset, stat: str, min_count: int) -> xr.Dataset:
    """Per model: the two scenarios' means (masked below min_count) and their difference B − A."""
    if stat not in ds.stat.values:
        raise UserError(f"statistic {stat!r} is not in this run: it has {', '.join(map(str, ds.stat.values))}")
    if ds.sizes["scenario"] < 2:
        raise UserError("this run has one scenario: a comparison needs two")
    a, b = ds.scenario.values[:2]
    sel = ds.sel(stat=stat)
    masked = sel["mean"].where(sel["count"] >= min_count)
    return xr.Dataset({"A": masked.sel(scenario=a, drop=True), "B": masked.sel(scenario=b, drop=True)}).assign(
        diff=lambda d: d["B"] - d["A"]
    ).assign_attrs(a=str(a), b=str(b))


def _limits(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        top = float(np.percentile(np.abs(finite), 99)) or 1e-12
        return -top, top
    lo, hi = np.percentile(finite, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def heatmap_grid(
    ds: xr.Dataset,
    stat: str | None = None,
    models: list[str] | None = None,
    positions: str | None = None,
    min_count: int = 1,
) -> Figure:
    """The seed figure: one row per model; columns A (benign), B (jailbreak), B − A; layers × positions."""
    stat = stat or str(ds.stat.values[0])
    if models:
        missing = [m for m in models if m not in ds.model.values]
        if missing:
            raise UserError(f"model {', '.join(missing)} is not in this run: it has {', '.join(ds.model.values)}")
        ds = ds.sel(model=models)
    crop = parse_range(positions, ds.position, "positions")
    if crop is not None:
        ds = ds.sel(position=crop)
    panels = cell_panels(ds, stat, min_count)
    n_rows = ds.sizes["model"]
    fig, axes = plt.subplots(n_rows, 3, figsize=(15, 3.4 * n_rows + 0.8), squeeze=False, layout="constrained")
    columns = [panels.attrs["a"].capitalize(), panels.attrs["b"].capitalize(), "Difference"]
    align = ds.attrs.get("align", "start")
    for row, model in enumerate(ds.model.values):
        has_layer = (ds["count"].sel(model=model).sum(["scenario", "stat", "position"]) > 0).values
        n_layers = int(np.flatnonzero(has_layer).max()) + 1 if has_layer.any() else ds.sizes["layer"]
        grids = [panels[k].sel(model=model).isel(layer=slice(0, n_layers)).values for k in ("A", "B", "diff")]
        shared = _limits(np.concatenate([grids[0].ravel(), grids[1].ravel()]), symmetric=False)
        label = str(ds["model_label"].sel(model=model).values) if "model_label" in ds else str(model)
        for col, (grid, title) in enumerate(zip(grids, columns)):
            ax = axes[row, col]
            vmin, vmax = _limits(grid, symmetric=True) if col == 2 else shared
            cmap = plt.get_cmap(DIVERGING if col == 2 else SEQUENTIAL).copy()
            cmap.set_bad(MASK_COLOUR)
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap,
                              vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{label} — {title}", fontsize=10)
            pos_values = ds.position.values
            xt = ticks(len(pos_values), 64)
            ax.set_xticks(xt, [str(pos_values[i]) for i in xt])
            ax.set_yticks(ticks(n_layers, 4))
            ax.set_xlabel(POSITION_LABELS.get(align, "Token Positions"))
            ax.set_ylabel("Layers")
            if col == 1:
                fig.colorbar(image, ax=axes[row, :2].tolist(), label=stat)
            elif col == 2:
                fig.colorbar(image, ax=ax, label=f"Δ {stat} ({panels.attrs['b']} − {panels.attrs['a']})")
    fig.suptitle(
        f"{stat}: mean over prompts per (layer, position). Grey cells: fewer than {min_count} prompt(s) reach that "
        f"position in a scenario (masked, not zero). Difference = {panels.attrs['b']} − {panels.attrs['a']}.",
        fontsize=9,
    )
    return fig


def save(fig: Figure, base: str | Path, svg: bool = False) -> list[Path]:
    """Write ``base.png`` and ``base.pdf`` (and ``base.svg``); return the paths."""
    base = Path(base)
    paths = [base.with_suffix(s) for s in (".png", ".pdf") + ((".svg",) if svg else ())]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    plt.close(fig)
    return paths
