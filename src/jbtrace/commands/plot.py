"""plot: RUN/figure.png|pdf, one row per model; Benign, Jailbreak, Difference (`jbtrace plot`)."""

from __future__ import annotations

from pathlib import Path


def plot_run(
    run: Path,
    *,
    stat: str | None = None,
    models: str | None = None,
    positions: str | None = None,
    min_count: int = 1,
    svg: bool = False,
) -> list[Path]:
    """The whole of `jbtrace plot`: draw the run's heatmap grid (``models``: comma-separated
    names, default all) into RUN/figure.*; return the paths written."""
    from jbtrace.trace import store
    from jbtrace.views import plot

    ds = store.open_run(run)
    fig = plot.heatmap_grid(
        ds,
        stat=stat,
        models=models.split(",") if models else None,
        positions=positions,
        min_count=min_count,
    )
    return plot.save(fig, Path(run) / "figure", svg=svg)
