"""Checkpoints: a long command's exact progress in ``RUN/.checkpoint/COMMAND``, so that a rerun
resumes it.

A checkpoint holds the fingerprint of the command that owns it (``fingerprint.json``:
models, prompt sets by sha256, every option that changes a number) and one file per unit
of work (a model's prompt set in one pass, a Ray shard): safetensors arrays
(the float64 accumulator state, per-prompt values) with JSON metadata (batches done,
token counters). Each file is written under a temporary name, flushed and renamed into
place, so a reader sees the previous state or the new one, never a half-written file.
Because the accumulators are exact and batches are planned deterministically, folding
the remaining batches into a restored state gives the same float64 numbers as one
uninterrupted pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from jbtrace.trace import hooks

DIR = ".checkpoint"
FINGERPRINT = "fingerprint.json"
EVERY_SECONDS = float(
    os.environ.get("JBTRACE_CHECKPOINT_SECONDS", 120)
)  # between saves of one unit's state


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def atomic_write(path: Path, write) -> None:
    """Call ``write(temporary_path)``, flush it to disk, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    hooks.reached("checkpoint-write")  # a kill here leaves only the temporary file
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """The saved states of one command in one run directory."""

    def __init__(
        self,
        run_dir: str | Path,
        command: str,
        fingerprint: dict,
        every_seconds: float | None = None,
    ):
        self.root = Path(run_dir) / DIR / command
        self.fingerprint = fingerprint
        self.every = EVERY_SECONDS if every_seconds is None else every_seconds
        self._last: dict[str, float] = {}
        self._claimed = False

    def saved_fingerprint(self) -> dict | None:
        """The fingerprint of the command whose states are here (None when no state was saved)."""
        path = self.root / FINGERPRINT
        return (
            json.loads(path.read_text())
            if path.is_file() and any(self.root.glob("*.safetensors"))
            else None
        )

    def started(self, key: str) -> None:
        """Count the interval to the next save of ``key`` from now."""
        self._last[key] = time.monotonic()

    def due(self, key: str) -> bool:
        return time.monotonic() - self._last.get(key, -np.inf) >= self.every

    def save(self, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Write one unit's state atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        fingerprint = self.root / FINGERPRINT
        if (
            not self._claimed
        ):  # this command's fingerprint, over any left by a command that saved no state
            atomic_write(
                fingerprint,
                lambda p: p.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True)),
            )
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write(
            self.root / f"{_slug(key)}.safetensors",
            lambda p: save_file(arrays, str(p), metadata={"meta": json.dumps(meta)}),
        )
        self._last[key] = time.monotonic()
        self._claimed = True

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """One unit's saved state, or None."""
        path = self.root / f"{_slug(key)}.safetensors"
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["meta"])
        return load_file(str(path)), meta

    def clear(self) -> None:
        """Remove every state of this command (after its result is published)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.parent.is_dir() and not any(self.root.parent.iterdir()):
            self.root.parent.rmdir()


class BatchCheckpoint:
    """A loop over planned batches whose state is a dict of arrays (numpy or torch) and JSON
    counters: restore it before the first batch, save it after batches (when the interval has
    passed, and always after the last)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint

    def restore(self, key: str, arrays: dict) -> dict:
        """Copy the saved state into ``arrays`` (in place); return its counters, with
        ``batches_done`` (0 when nothing was saved)."""
        saved = self.checkpoint.load(key)
        self.checkpoint.started(key)
        if saved is None:
            return {"batches_done": 0}
        state, meta = saved
        for name, target in arrays.items():
            if isinstance(target, torch.Tensor):
                target.copy_(torch.from_numpy(state[name]))
            else:
                target[...] = state[name]
        return meta

    def step(
        self, key: str, batches_done: int, n_batches: int, arrays: dict, counters: dict
    ) -> None:
        """After a batch: save ``arrays`` and ``counters`` when the interval has passed, and
        always after the last batch."""
        if batches_done < n_batches and not self.checkpoint.due(key):
            return
        state = {
            name: value.cpu().numpy() if isinstance(value, torch.Tensor) else value
            for name, value in arrays.items()
        }
        meta = {"batches_done": batches_done, "n_batches": n_batches, **counters}
        self.checkpoint.save(key, state, meta)


MOMENTS = ("count", "mean", "m2", "nonfinite")  # the fields of an accumulate.Moments


class ExtractCheckpoint:
    """What ``extract`` calls: a ``BatchCheckpoint`` of a prompt set's moments, per-prompt
    values and token counters."""

    def __init__(self, checkpoint: Checkpoint):
        self.batches = BatchCheckpoint(checkpoint)
        self._base: dict[str, tuple[int, int]] = {}

    def restore(self, key: str, moments, per_prompt: dict[str, np.ndarray], trace) -> int:
        """Put the saved state into ``moments`` and the ``per_prompt`` arrays (in place); return
        the batches already done."""
        self._base[key] = (trace.tokens_processed, trace.tokens_padded)
        meta = self.batches.restore(key, _arrays(moments, per_prompt))
        trace.tokens_processed += meta.get("tokens_processed", 0)
        trace.tokens_padded += meta.get("tokens_padded", 0)
        return meta["batches_done"]

    def step(
        self,
        key: str,
        batches_done: int,
        n_batches: int,
        moments,
        per_prompt: dict[str, np.ndarray],
        trace,
    ) -> None:
        """After a batch: save when the interval has passed, and always after the last batch."""
        processed, padded = self._base[key]
        counters = {
            "tokens_processed": trace.tokens_processed - processed,
            "tokens_padded": trace.tokens_padded - padded,
        }
        arrays = _arrays(moments, per_prompt)
        self.batches.step(key, batches_done, n_batches, arrays, counters)


def _arrays(moments, per_prompt: dict[str, np.ndarray]) -> dict:
    return {**{name: getattr(moments, name) for name in MOMENTS}, **per_prompt}
