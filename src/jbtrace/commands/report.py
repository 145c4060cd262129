"""report: RUN/report.html, one self-contained page of all the run holds (`jbtrace report`)."""

from __future__ import annotations

from pathlib import Path


def report_run(run: Path, prompt_sets=None, seed: int = 0) -> Path:
    """Write or update the run's report (also at the end of run, demo, detect and guard);
    return its path."""
    from jbtrace.views import report

    return report.write(run, prompt_sets=prompt_sets, seed=seed)
