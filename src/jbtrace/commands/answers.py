"""Answers kept as they are generated, so that `outcomes` killed mid-way resumes where it stopped.

Prompts are answered in chunks of ``CHUNK``; after each chunk every answer so far is written
atomically to ``RUN/.checkpoint/outcomes/answers.jsonl`` (first line: the generation settings
they depend on). A rerun with the same settings takes them from there and answers only the rest;
greedy answers depend only on the prompt, the model and these settings. The judges run after all
answers are kept, so a judge that fails loses no generation. The file goes once the result is
published.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from jbtrace.trace import hooks
from jbtrace.trace.checkpoint import DIR, atomic_write

CHUNK = int(os.environ.get("JBTRACE_CHECKPOINT_PROMPTS", 32))  # prompts answered between saves
COMMAND = "outcomes"


def _path(out_dir: Path) -> Path:
    return Path(out_dir) / DIR / COMMAND / "answers.jsonl"


def _load(path: Path, config: dict) -> dict:
    """The answers a killed run with the same settings kept ({} if none or other settings)."""
    from jbtrace.defend.attack_success import Answer

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or json.loads(lines[0]) != {"generation": config}:
            return {}
        rows = [json.loads(line) for line in lines[1:]]
        return {r["prompt"]: Answer(r["response"], r["new_tokens"], r["finished"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # nothing kept, or a file this version cannot read: answer again


def _save(path: Path, config: dict, answers: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"generation": config})] + [
        json.dumps({"prompt": p, **asdict(a)}, ensure_ascii=False) for p, a in answers.items()
    ]
    atomic_write(path, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def answer_all(
    lm,
    sets: list,
    options,
    out_dir: Path,
    reuse: dict,
    progress_start: Callable | None = None,
    behaviours=None,
) -> tuple[dict, int]:
    """Answers to every prompt of ``sets`` that `outcomes` will judge (`answerable`: prompts too
    long for ``options.max_tokens`` get none), and how many were already there: in ``reuse`` or
    kept by a killed run with the same settings. The others are generated in chunks, each kept
    on disk before the next."""
    from jbtrace.defend import attack_success as A

    config = json.loads(json.dumps(A.generation_config(lm, options)))
    path = _path(out_dir)
    known = {**reuse, **_load(path, config)}
    todo, had = [], 0  # had: as run_outcomes counts reused answers (per prompt of each set)
    for ps in A.answerable(lm, sets, options, behaviours)[0]:
        reached = list(ps.texts)
        had += sum(t in known for t in reached)
        todo += [t for t in reached if t not in known]
    todo = list(dict.fromkeys(todo))
    advance = progress_start(f"{lm.name} · answers", len(todo)) if progress_start and todo else None
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        known.update(zip(chunk, A.answers(lm, chunk, options, advance), strict=True))
        _save(path, config, known)
        hooks.reached("answers-saved")
    return known, had


def forget(out_dir: Path) -> None:
    """Remove the kept answers (once the result that holds them is published)."""
    path = _path(out_dir)
    shutil.rmtree(path.parent, ignore_errors=True)
    if path.parent.parent.is_dir() and not any(path.parent.parent.iterdir()):
        path.parent.parent.rmdir()
