"""Answers kept as they are generated, so that `outcomes` killed mid-way resumes where it stopped.

Prompts are answered in chunks (`commands.kept.CHUNK`); after each chunk every answer so far is
written atomically to ``RUN/.checkpoint/outcomes/answers.jsonl`` (`commands.kept.Kept`). A rerun
with the same settings takes them from there and answers only the rest;
greedy answers depend only on the prompt, the model and these settings. The judges run after all
answers are kept, so a judge that fails loses no generation. The file goes once the result is
published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from jbtrace.commands.kept import Kept

COMMAND = "outcomes"


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

    kept = Kept(out_dir, COMMAND, A.generation_config(lm, options))
    kept.answers.update((("", p), asdict(a)) for p, a in reuse.items())
    reached = [t for ps in A.answerable(lm, sets, options, behaviours)[0] for t in ps.texts]
    had = sum(("", t) in kept.answers for t in reached)  # as run_outcomes counts reused answers
    todo = kept.missing("", reached)
    advance = progress_start(f"{lm.name} · answers", len(todo)) if progress_start and todo else None
    kept.answer("", todo, lambda chunk: [asdict(a) for a in A.answers(lm, chunk, options, advance)])
    return {p: A.Answer(**a) for (_, p), a in kept.answers.items()}, had


def forget(out_dir: Path) -> None:
    """Remove the kept answers (once the result that holds them is published)."""
    Kept(out_dir, COMMAND, {}).forget()
