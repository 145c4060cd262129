"""Static figures from the trace store.

Every function returns a matplotlib Figure; nothing is shown.
"""

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
POSITION_LABELS = {
    "start": "Token Positions",
    "end": "Token Positions (from the end)",
    "relative": "Relative Position (bin)",
}


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
    """Tick positions every ``preferred`` cells when that gives at least two ticks, else a smaller
    round step."""
    step = preferred
    while step > 1 and n // step < 2:
        step //= 2
    return np.arange(0, n, max(step, 1))


def cell_panels(ds: xr.Dataset, stat: str, min_count: int) -> xr.Dataset:
    """Per model: the two scenarios' means (masked below min_count) and their difference B − A."""
    if stat not in ds.stat.values:
        raise UserError(
            f"statistic {stat!r} is not in this run: it has {', '.join(map(str, ds.stat.values))}"
        )
    if ds.sizes["scenario"] < 2:
        raise UserError("this run has one scenario: a comparison needs two")
    a, b = ds.scenario.values[:2]
    sel = ds.sel(stat=stat)
    masked = sel["mean"].where(sel["count"] >= min_count)
    return (
        xr.Dataset({"A": masked.sel(scenario=a, drop=True), "B": masked.sel(scenario=b, drop=True)})
        .assign(diff=lambda d: d["B"] - d["A"])
        .assign_attrs(a=str(a), b=str(b))
    )


def select(ds: xr.Dataset, models: list[str] | None, positions: str | None) -> xr.Dataset:
    """The models asked for (all by default) and the positions START:END; unknown ones are user
    errors."""
    ds = _select_models(ds, models)
    crop = parse_range(positions, ds.position, "positions")
    return ds if crop is None else ds.sel(position=crop)


def _select_models(ds: xr.Dataset, models: list[str] | None) -> xr.Dataset:
    """The models asked for (all by default); an unknown one is a user error."""
    if not models:
        return ds
    missing = [m for m in models if m not in ds.model.values]
    if missing:
        raise UserError(
            f"model {', '.join(missing)} is not in this run: it has {', '.join(ds.model.values)}"
        )
    return ds.sel(model=models)


def masked_cmap(name: str):
    """A colour map that draws masked (NaN) cells in the mask grey."""
    return plt.get_cmap(name).with_extremes(bad=MASK_COLOUR)


def _limits(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        top = float(np.percentile(np.abs(finite), 99)) or 1e-12
        return -top, top
    lo, hi = np.percentile(finite, [2, 98])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def heatmap_grid(
    ds: xr.Dataset,
    stat: str | None = None,
    models: list[str] | None = None,
    positions: str | None = None,
    min_count: int = 1,
) -> Figure:
    """The seed figure: one row per model; columns A (benign), B (jailbreak), B − A; layers ×
    positions."""
    stat = stat or str(ds.stat.values[0])
    ds = select(ds, models, positions)
    panels = cell_panels(ds, stat, min_count)
    n_rows = ds.sizes["model"]
    fig, axes = plt.subplots(
        n_rows, 3, figsize=(15, 3.4 * n_rows + 0.8), squeeze=False, layout="constrained"
    )
    columns = [panels.attrs["a"].capitalize(), panels.attrs["b"].capitalize(), "Difference"]
    align = ds.attrs.get("align", "start")
    for row, model in enumerate(ds.model.values):
        has_layer = (ds["count"].sel(model=model).sum(["scenario", "stat", "position"]) > 0).values
        n_layers = (
            int(np.flatnonzero(has_layer).max()) + 1 if has_layer.any() else ds.sizes["layer"]
        )
        grids = [
            panels[k].sel(model=model).isel(layer=slice(0, n_layers)).values
            for k in ("A", "B", "diff")
        ]
        shared = _limits(np.concatenate([grids[0].ravel(), grids[1].ravel()]), symmetric=False)
        label = (
            str(ds["model_label"].sel(model=model).values) if "model_label" in ds else str(model)
        )
        for col, (grid, title) in enumerate(zip(grids, columns, strict=True)):
            ax = axes[row, col]
            vmin, vmax = _limits(grid, symmetric=True) if col == 2 else shared
            cmap = masked_cmap(DIVERGING if col == 2 else SEQUENTIAL)
            image = ax.imshow(
                np.ma.masked_invalid(grid),
                origin="lower",
                aspect="auto",
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_title(f"{label} — {title}", fontsize=10)
            pos_values = ds.position.values
            xt = ticks(len(pos_values), 64)
            ax.set_xticks(xt, [str(pos_values[i]) for i in xt])
            ax.set_yticks(ticks(n_layers, 4))
            ax.set_xlabel(POSITION_LABELS.get(align, "Token Positions"))
            ax.set_ylabel("Layers")
            if col == 1:
                fig.colorbar(image, ax=axes[row, :2].tolist(), label=stat, extend="both")
            elif col == 2:
                fig.colorbar(
                    image,
                    ax=ax,
                    label=f"Δ {stat} ({panels.attrs['b']} − {panels.attrs['a']})",
                    extend="both",
                )
    fig.suptitle(
        f"{stat}: mean over prompts per (layer, position); "
        f"Difference = {panels.attrs['b']} − {panels.attrs['a']}.\n"
        f"Grey cells: fewer than {min_count} prompt(s) reach that position in a scenario "
        "(masked, not zero). "
        "Colour scales clip at the 2nd–98th percentile (arrows on the colour bars).",
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


def detect_curves(reports: list[dict]) -> Figure:
    """Selection score against layer: one panel per model, one line per (source, feature kind).

    The selection score is what detectors are ranked by (the out-of-fold TPR at the target FPR).
    Each point is the best classifier at that layer for that feature; the dashed grey line is
    the best text baseline (length, surface counts or word n-grams) on the same score.
    """
    if not reports:
        raise UserError("no detector results to draw")
    n = len(reports)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(6.4 * cols, 3.8 * rows), squeeze=False, layout="constrained"
    )
    features = list(dict.fromkeys(r["feature"] for rep in reports for r in rep["rows"]))
    order = ("resid", "attn_out", "mlp_out", "mixer")
    sources = sorted(
        {r["source"] for rep in reports for r in rep["rows"]},
        key=lambda s: (s not in order, order.index(s) if s in order else 0, s),
    )
    # a palette is as long as it is: features and sources beyond it get no colour / style
    colours = dict(zip(features, plt.get_cmap("tab10").colors, strict=False))
    styles = dict(zip(sources, ("-", "--", ":", "-."), strict=False))
    value = lambda r: -1.0 if r["selection"] is None else r["selection"]  # noqa: E731
    for ax, rep in zip(axes.flat, reports, strict=False):  # spare axes are hidden below
        for source in sources:
            for feature in features:
                best = {}
                for r in rep["rows"]:
                    if (
                        r["source"] == source
                        and r["feature"] == feature
                        and (r["layer"] not in best or value(r) > value(best[r["layer"]]))
                    ):
                        best[r["layer"]] = r
                if not best:
                    continue
                layers = sorted(best)
                label = feature if len(sources) == 1 else f"{source} {feature}"
                ax.plot(
                    layers,
                    [value(best[k]) for k in layers],
                    styles[source],
                    marker="o",
                    ms=3,
                    color=colours[feature],
                    label=label,
                )
        length = max(rep["baseline"], key=value)
        ax.axhline(
            value(length),
            color="0.4",
            ls=(0, (4, 3)),
            lw=1.2,
            label=f"text baseline: {length['feature']} ({length['classifier']})",
        )
        ax.set_title(rep["label"], fontsize=10)
        ax.set_xlabel("Layer")
        ax.set_ylabel("Selection score (worst held-out source, or TPR at target FPR)", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", ncols=2)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig


def significance_grid(
    cells: xr.Dataset,
    stat: str | None = None,
    models: list[str] | None = None,
    positions: str | None = None,
    q: float = 0.05,
) -> Figure:
    """Difference (B − A) per model, layers × positions.

    Cells not significant at ``q`` are washed out, untested cells grey.

    ``cells`` is ``CompareResult.cells`` (or a store with ``diff`` and ``significant``).
    """
    stat = stat or str(cells.stat.values[0])
    if stat not in cells.stat.values:
        raise UserError(
            f"statistic {stat!r} is not in this comparison: "
            f"it has {', '.join(map(str, cells.stat.values))}"
        )
    cells = select(cells, models, positions).sel(stat=stat)
    n = cells.sizes["model"]
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(7.5 * cols, 3.3 * rows + 0.9), squeeze=False, layout="constrained"
    )
    wash = np.array([1.0, 1.0, 1.0, 0.78])
    for ax, model in zip(axes.flat, cells.model.values, strict=False):  # spare axes hidden below
        c = cells.sel(model=model)
        has = np.isfinite(c["diff"].values)
        n_layers = int(np.flatnonzero(has.any(axis=1)).max()) + 1 if has.any() else c.sizes["layer"]
        diff = c["diff"].values[:n_layers]
        sig = c["significant"].values[:n_layers].astype(bool)
        lo, hi = _limits(diff, symmetric=True)
        cmap = masked_cmap(DIVERGING)
        image = ax.imshow(
            np.ma.masked_invalid(diff),
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            interpolation="nearest",
        )
        overlay = np.zeros((*diff.shape, 4))
        overlay[np.isfinite(diff) & ~sig] = wash
        ax.imshow(overlay, origin="lower", aspect="auto", interpolation="nearest")
        share = sig.sum() / max(int(np.isfinite(c["p"].values).sum()), 1) if "p" in c else np.nan
        label = str(c["model_label"].values) if "model_label" in c.coords else str(model)
        ax.set_title(
            f"{label} — {int(sig.sum())} cells significant ({share:.0%} of tested)", fontsize=10
        )
        xt = ticks(c.sizes["position"], 64)
        ax.set_xticks(xt, [str(c.position.values[i]) for i in xt])
        ax.set_yticks(ticks(n_layers, 4))
        ax.set_xlabel("Token Positions")
        ax.set_ylabel("Layers")
        fig.colorbar(image, ax=ax, label=f"Δ {stat}")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(
        f"Difference of {stat} per (layer, position). "
        f"Full colour: significant at q={q} (Welch, BH per model); "
        f"washed out: not significant; grey: not tested (too few prompts in a scenario).",
        fontsize=9,
    )
    return fig


def profiles(
    layer_profile: xr.Dataset, position_profile: xr.Dataset, stat: str | None = None
) -> Figure:
    """Layer and position profiles of B − A with 95% CI bands, one line per model.

    Left: per layer, difference of prompt means (bootstrap CI; filled dots significant).
    Right: per position, mean over layers of the cell differences (conservative CI).
    """
    stat = stat or str(position_profile.stat.values[0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    colours = plt.get_cmap("tab10").colors
    dashes = ("-", "--", ":", "-.")
    bounds = []
    for k, model in enumerate(position_profile.model.values):
        colour = colours[k % len(colours)]
        label = (
            str(position_profile["model_label"].sel(model=model).values)
            if "model_label" in position_profile.coords
            else str(model)
        )
        if model in layer_profile.get("model", xr.DataArray([])).values:
            lp = layer_profile.sel(model=model, stat=stat)
            ok = np.isfinite(lp["diff"].values)
            x = lp.layer.values[ok]
            left.plot(x, lp["diff"].values[ok], dashes[k % 4], color=colour, lw=1.3, label=label)
            left.fill_between(
                x, lp["ci_low"].values[ok], lp["ci_high"].values[ok], color=colour, alpha=0.18, lw=0
            )
            sig = lp["significant"].values[ok].astype(bool)
            left.plot(x[sig], lp["diff"].values[ok][sig], "o", color=colour, ms=3.5)
            left.plot(x[~sig], lp["diff"].values[ok][~sig], "o", mfc="white", color=colour, ms=3.5)
        pp = position_profile.sel(model=model, stat=stat)
        ok = np.isfinite(pp["diff"].values)
        x = pp.position.values[ok]
        right.plot(x, pp["diff"].values[ok], dashes[k % 4], color=colour, lw=1, label=label)
        right.fill_between(
            x, pp["ci_low"].values[ok], pp["ci_high"].values[ok], color=colour, alpha=0.18, lw=0
        )
        bounds += [pp["ci_low"].values[ok], pp["ci_high"].values[ok]]
    bounds = np.concatenate(bounds) if bounds else np.array([])
    if np.isfinite(
        bounds
    ).any():  # the few deepest positions (few prompts) have huge CIs: keep the axis on the bulk
        lo, hi = np.nanpercentile(bounds, [2, 98])
        pad = 0.1 * (hi - lo) or 1e-3
        right.set_ylim(lo - pad, hi + pad)
    for ax in (left, right):
        ax.axhline(0, color="0.3", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_ylabel(f"Δ {stat}")
    left.set_xlabel("Layer")
    left.set_title(
        "Layer profile: difference of prompt means (95% bootstrap CI; filled = significant)",
        fontsize=9,
    )
    right.set_xlabel("Token Positions")
    right.set_title(
        "Position profile: mean over layers of cell differences "
        "(95% CI, conservative; axis clipped)",
        fontsize=9,
    )
    left.legend(fontsize=7)
    return fig


def attention_grid(
    ds: xr.Dataset,
    models: list[str] | None = None,
    positions: str | None = None,
    floor: float = 1e-10,
    min_count: int = 1,
) -> Figure:
    """Query × key attention: one row per (model, layer).

    Columns A, B (log10 mean probability) and the log difference B − A.
    """
    ds, crop = _attention_selection(ds, models, positions, floor)
    mean = ds["attn_mean"].mean("head") if "head" in ds["attn_mean"].dims else ds["attn_mean"]
    logp = np.log10(np.maximum(mean.where(ds["attn_count"] >= min_count), floor))
    a, b = (str(s) for s in ds.scenario.values[:2])
    rows = [
        (m, int(layer))
        for m in ds.model.values
        for layer in ds.attn_layer.values
        if int(ds["attn_count"].sel(model=m, attn_layer=layer).sum()) > 0
    ]
    if not rows:
        raise UserError("no attention cells to draw in this range")
    fig, axes = plt.subplots(
        len(rows), 3, figsize=(15, 4.2 * len(rows) + 0.8), squeeze=False, layout="constrained"
    )
    low = float(np.log10(floor))
    for row, (model, layer) in enumerate(rows):
        sel = logp.sel(model=model, attn_layer=layer)
        reached = np.flatnonzero(
            (ds["attn_count"].sel(model=model, attn_layer=layer) > 0)
            .any(["scenario", "key"])
            .values
        )
        n = int(reached.max()) + 1 if crop is None else sel.sizes["query"]
        grids = [sel.sel(scenario=s).values[:n, :n] for s in (a, b)]
        grids.append(grids[1] - grids[0])
        label = (
            str(ds["model_label"].sel(model=model).values) if "model_label" in ds else str(model)
        )
        titles = [
            f"{label} — Layer {layer}: {title}"
            for title in (a.capitalize(), b.capitalize(), "Difference")
        ]
        _attention_row(fig, axes[row], grids, titles, ds["query"].values[:n], n, low, (a, b))
    heads = ds["attn_mean"].attrs.get("heads", "mean")
    fig.suptitle(
        f"Attention probability averaged over prompts (heads: {heads}), "
        f"log10 with floor {floor:g}. Grey: fewer than "
        f"{min_count} prompt(s) with both tokens, or a key after the query (causal mask). "
        f"Difference = log10 {b} − log10 {a}.",
        fontsize=9,
    )
    return fig


def _attention_selection(
    ds: xr.Dataset, models: list[str] | None, positions: str | None, floor: float
) -> tuple[xr.Dataset, slice | None]:
    """The run's attention maps cut to the models and positions asked for, and the crop."""
    if "attn_mean" not in ds:
        raise UserError("this run has no attention maps: run `jbtrace attention` first")
    if not 0 < floor < 1:
        raise UserError(f"--floor {floor}: choose a probability between 0 and 1, e.g. 1e-10")
    ds = _select_models(ds, models)
    crop = parse_range(positions, ds["query"], "positions")
    if crop is not None:
        ds = ds.sel(query=crop, key=crop)
    return ds, crop


def _attention_row(
    fig: Figure,
    axes: np.ndarray,
    grids: list[np.ndarray],
    titles: list[str],
    values: np.ndarray,
    n: int,
    low: float,
    scenarios: tuple[str, str],
) -> None:
    """One (model, layer) row: A and B on one log scale, then their difference."""
    a, b = scenarios
    for col, (grid, title) in enumerate(zip(grids, titles, strict=True)):
        ax = axes[col]
        vmin, vmax = _limits(grid, symmetric=True) if col == 2 else (low, 0.0)
        cmap = masked_cmap(DIVERGING if col == 2 else SEQUENTIAL)
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            origin="upper",
            aspect="equal",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=10)
        tick = ticks(n, 64)
        ax.set_xticks(tick, [str(values[i]) for i in tick])
        ax.set_yticks(tick, [str(values[i]) for i in tick])
        ax.set_xlabel("Key Token")
        ax.set_ylabel("Query Token")
        if col == 1:
            fig.colorbar(image, ax=axes[:2].tolist(), label="log10 mean attention probability")
        elif col == 2:
            fig.colorbar(image, ax=ax, label=f"Δ log10 probability ({b} − {a})")
