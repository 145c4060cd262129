"""report: RUN/report.html, one self-contained page of everything the run holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import app, out
from jbtrace.commands.report import report_run


@app.command("report")
def report_cmd(run: Annotated[Path, typer.Argument(help="Run directory.")]):
    """Write RUN/report.html: provenance, heatmaps, profiles, observations, attention, detectors, guard, prompts (offline, one file)."""  # noqa: E501 (one-line help)
    print_report(report_run(run))


def print_report(path: Path) -> None:
    """The report's path, as run, demo, detect and guard end."""
    out.print(f"report: {path}", highlight=False)
