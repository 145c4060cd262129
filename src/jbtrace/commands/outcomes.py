"""outcomes: answer each prompt, judge the answers, count attack success per set, and write
RUN/outcomes.md|json|jsonl (`jbtrace outcomes`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.prompts import load_prompt_sets
from jbtrace.errors import UserError

if TYPE_CHECKING:
    from jbtrace.defend.attack_success import OutcomeResult


@dataclass(frozen=True)
class OutcomesRun:
    """What `outcomes_run` did: the judged answers and rates, and the files it wrote."""

    result: OutcomeResult
    paths: list[Path]


def _ignore(line):
    return None


def _prompt_sets(prompts, pair, text_field, limit, seed, note):
    """The --prompts sets plus, per --pair SET, the set SET-direct; and the AdvBench behaviours
    (None where no set needs them)."""
    from jbtrace.defend import attack_success as outcomes
    from jbtrace.prompts import advbench_behaviours

    if not prompts:
        raise UserError("give the prompt sets to answer with --prompts NAME=SOURCE")
    sets = load_prompt_sets(prompts, text_field, limit, seed, note=note)
    by_name = {s.name: s for s in sets}
    unknown = [p for p in pair or [] if p not in by_name]
    if unknown:
        raise UserError(
            f"--pair {unknown[0]!r}: no prompt set of that name (sets: {', '.join(by_name)})"
        )
    taken = [f"{p}-direct" for p in pair or [] if f"{p}-direct" in by_name]
    if taken:
        raise UserError(f"--pair: a prompt set is already named {taken[0]!r}; rename it")
    needs_behaviours = pair or any(s.source.startswith("pyrit:") for s in sets)
    behaviours = advbench_behaviours() if needs_behaviours else None
    sets += [outcomes.paired_direct(by_name[p], f"{p}-direct", behaviours) for p in pair or []]
    return sets, behaviours


def outcomes_run(
    *,
    model: str,
    prompts: list[str] | None,
    out_dir: str | Path,
    max_new_tokens: int = 64,
    judge: list[str] | None = None,
    on_topic_threshold: float | None = None,
    calibrate: str | None = None,
    pair: list[str] | None = None,
    chat_template: bool | None = None,
    max_tokens: int = 2048,
    reuse_answers: bool = True,
    text_field: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
    device: str = "cpu",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    batch_size: int = 8,
    command: str = "",
    progress: Callable[[], contextlib.AbstractContextManager] | None = None,
    note: Callable[[str], None] | None = None,
) -> OutcomesRun:
    """The whole of `jbtrace outcomes`: generate each prompt's answer (reusing those already in
    ``out_dir`` from the same model and settings), judge it, count attack success per set and
    write the run. ``progress()`` opens the progress display (yielding ``start(what, total)``);
    ``note(line)`` hears what the user should read."""
    from jbtrace.defend import attack_success as outcomes
    from jbtrace.defend.guard import GenerateOptions
    from jbtrace.models import load_model
    from jbtrace.views.outputs import write_outcomes

    note = note or _ignore
    sets, behaviours = _prompt_sets(prompts, pair, text_field, limit, seed, note)
    lm = load_model(
        model,
        dtype=dtype,
        device=device,
        revision=revision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        seed=seed,
    )
    options = GenerateOptions(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_tokens=max_tokens,
        chat_template=chat_template,
    )
    judges = outcomes.make_judges(judge, lm, options, on_topic_threshold)
    reuse = (
        outcomes.previous_answers(out_dir, outcomes.generation_config(lm, options))
        if reuse_answers
        else {}
    )
    benign = next((s.name for s in sets if s.name.lower().startswith("benign")), None)
    with (progress or contextlib.nullcontext)() as start:
        result = outcomes.run_outcomes(
            lm,
            sets,
            judges,
            options,
            behaviours=behaviours,
            reuse=reuse,
            calibrate=calibrate or benign,
            seed=seed,
            progress_start=start,
        )
    if result.config["reused_answers"]:
        note(
            f"reused {result.config['reused_answers']} answers already in {out_dir} "
            "(same model and settings)"
        )
    return OutcomesRun(result, write_outcomes(result, out_dir, command))
