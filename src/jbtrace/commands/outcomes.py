"""outcomes: answer each prompt, judge the answers, count attack success per set, and write
RUN/outcomes.md|json|jsonl (`jbtrace outcomes`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.errors import UserError

if TYPE_CHECKING:
    from jbtrace.defend.attack_success import OutcomeResult
    from jbtrace.defend.guard import GenerateOptions

OUTCOMES_RUN = RunOptions(out_dir=Path("runs/outcomes"))  # outcomes' own run directory


def outcomes_generation() -> GenerateOptions:
    """How outcomes generates by default: greedy answers to prompts of up to 2048 tokens."""
    from jbtrace.defend.guard import GenerateOptions

    return GenerateOptions(max_tokens=2048)


@dataclass(frozen=True)
class OutcomesRun:
    """What `outcomes_run` did: the judged answers and rates, and the files it wrote."""

    result: OutcomeResult
    paths: list[Path]


def _ignore(line):
    return None


def _prompt_sets(prompts: PromptOptions, pair, seed, note):
    """The --prompts sets plus, per --pair SET, the set SET-direct; and the AdvBench behaviours
    (None where no set needs them)."""
    from jbtrace.defend import attack_success as outcomes
    from jbtrace.prompts import advbench_behaviours

    if not prompts.prompts:
        raise UserError("give the prompt sets to answer with --prompts NAME=SOURCE")
    pair = pair or []
    sets = prompts.load(seed, note=note)
    by_name = {s.name: s for s in sets}
    unknown = [p for p in pair or [] if p not in by_name]
    if unknown:
        raise UserError(
            f"--pair {unknown[0]!r}: no prompt set of that name (sets: {', '.join(by_name)})"
        )
    taken = [f"{p}-direct" for p in pair or [] if f"{p}-direct" in by_name]
    if taken:
        raise UserError(f"--pair: a prompt set is already named {taken[0]!r}; rename it")
    # a set records the request each prompt carries in info["behaviours"]; AdvBench is searched
    # only for pyrit sets or --pair sets that do not
    unknown_requests = [
        s
        for s in sets
        if s.info.get("behaviours") is None and (s.source.startswith("pyrit:") or s.name in pair)
    ]
    behaviours = advbench_behaviours() if unknown_requests else None
    sets += [outcomes.paired_direct(by_name[p], f"{p}-direct", behaviours) for p in pair or []]
    return sets, behaviours


def _check_out(out_dir: Path) -> None:
    """Refuse a --out that is a file, or whose outcomes.json jbtrace cannot read (its answers
    would be reused), before any work."""
    import json

    from jbtrace import publish

    publish.check_folder(out_dir)
    publish.recover(out_dir)  # a publish a kill interrupted is finished before answers are reused
    summary = out_dir / "outcomes.json"
    try:
        ok = not summary.exists() or isinstance(json.loads(summary.read_text("utf-8")), dict)
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise UserError(
            f"{summary}: not an outcomes summary jbtrace wrote (unreadable or not a JSON object); "
            "remove it or choose another --out"
        )


def outcomes_run(
    prompts: PromptOptions,
    models: ModelOptions,
    generation: GenerateOptions | None = None,
    out: RunOptions = OUTCOMES_RUN,
    *,
    judge: list[str] | None = None,
    on_topic_threshold: float | None = None,
    calibrate: str | None = None,
    pair: list[str] | None = None,
    reuse_answers: bool = True,
    judge_error: Path | None = None,
    command: str = "",
    progress: Callable[[], contextlib.AbstractContextManager] | None = None,
    note: Callable[[str], None] | None = None,
) -> OutcomesRun:
    """The whole of `jbtrace outcomes`: generate each prompt's answer with the one model of
    ``models`` (``generation``: default `outcomes_generation()`; answers already in
    ``out.out_dir`` from the same model and settings are reused), judge it, count attack
    success per set and write the run. ``progress()`` opens the progress display (yielding
    ``start(what, total)``); ``note(line)`` hears what the user should read. ``judge_error``:
    a judges.json (`jbtrace judges validate`) whose error is stated beside every ASR."""
    from jbtrace.commands.answers import answer_all, forget
    from jbtrace.commands.guard import check_new_tokens
    from jbtrace.defend import attack_success as outcomes
    from jbtrace.defend.validation import read_error
    from jbtrace.models import load_model
    from jbtrace.views.outputs import write_outcomes

    note, seed, out_dir = note or _ignore, out.seed, out.out_dir
    _check_out(Path(out_dir))
    options = generation or outcomes_generation()
    if len(models.model) > 1:
        raise UserError("outcomes answers with one --model")
    error = read_error(judge_error) if judge_error else None  # a bad file fails before work
    sets, behaviours = _prompt_sets(prompts, pair, seed, note)
    [(spec, name)] = models.labelled()
    lm = load_model(spec, name=name, **models.load_options(), seed=seed)
    check_new_tokens(lm, options.max_new_tokens)
    judges = outcomes.make_judges(judge, lm, options, on_topic_threshold)
    reuse = (
        outcomes.previous_answers(out_dir, outcomes.generation_config(lm, options))
        if reuse_answers
        else {}
    )
    benign = next((s.name for s in sets if s.name.lower().startswith("benign")), None)
    with (progress or contextlib.nullcontext)() as start:
        # answers kept on disk as they come (a killed run resumes), then judged
        known, had = answer_all(lm, sets, options, Path(out_dir), reuse, start, behaviours)
        result = outcomes.run_outcomes(
            lm,
            sets,
            judges,
            options,
            behaviours=behaviours,
            reuse=known,
            calibrate=calibrate or benign,
            seed=seed,
            progress_start=start,
            judge_error=error,
        )
    result.config["reused_answers"] = had
    if result.config["reused_answers"]:
        note(
            f"reused {result.config['reused_answers']} answers already in {out_dir} "
            "(same model and settings)"
        )
    paths = write_outcomes(result, out_dir, command)
    forget(Path(out_dir))
    return OutcomesRun(result, paths)
