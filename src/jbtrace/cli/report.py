"""report: RUN/report.html, one self-contained page of everything the run holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import app, out


@app.command("report")
def report_cmd(run: Annotated[Path, typer.Argument(help="Run directory.")]):
    """Write RUN/report.html: provenance, heatmaps, profiles, observations, attention, detectors, guard, prompts (offline, one file)."""  # noqa: E501 (one-line help)
    publish(run)


def publish(run: Path, prompt_sets=None, seed: int = 0) -> Path:
    """Write or update the run's report and print its path (called at the end of run, demo,
    detect and guard)."""
    from jbtrace.views import report

    path = report.write(run, prompt_sets=prompt_sets, seed=seed)
    out.print(f"report: {path}", highlight=False)
    return path
