"""compare: which differences in a run are real (`jbtrace compare`)."""

from __future__ import annotations

from pathlib import Path


def compare_run(run: Path, svg: bool = False, **options):
    """The whole of `jbtrace compare`: compare the run's two scenarios and write the outputs
    into the run; return the CompareResult and the paths written."""
    from jbtrace.analysis import compare
    from jbtrace.trace import store
    from jbtrace.views import outputs

    result = compare.compare(store.open_run(run), **options)
    return result, outputs.write_compare(result, run, svg=svg)
