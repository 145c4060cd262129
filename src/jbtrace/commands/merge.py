"""merge: shard runs of one extract into the store one run over all prompts would have written."""

from __future__ import annotations

from pathlib import Path

from jbtrace.errors import UserError


def merge_run(runs: list[Path], out_dir: Path, overwrite: bool = False) -> Path:
    """The whole of `jbtrace merge`: check and combine the shard runs, write RUN/trace.zarr."""
    from jbtrace.trace import runs as run_dirs
    from jbtrace.trace import store

    if len(runs) < 2:
        raise UserError("merge needs at least two runs")
    shards = [store.open_run(r) for r in runs]
    run_dirs.prepare(out_dir, "merge", {}, overwrite)
    return store.write(store.merge(shards), out_dir)
