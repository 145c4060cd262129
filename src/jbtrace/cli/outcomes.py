"""outcomes: what the model answers to each prompt, judged; ASR per set; direct against wrapped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jbtrace.cli.common import (
    REQUIRED,
    Converted,
    Quiet,
    app,
    command_line,
    err,
    groups,
    out,
    progress_bar,
    say,
)
from jbtrace.commands import outcomes_run
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.outcomes import OUTCOMES_RUN, outcomes_generation
from jbtrace.defend.guard import GenerateOptions

Model = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Model spec (a causal LM), e.g. builtin:qwen2.5-coder-0.5b."
    ),
]
LOAD = ("dtype", "device", "revision", "allow_pickle", "trust_remote_code")
GENERATION = outcomes_generation()
OutDir = Annotated[
    Path, typer.Option("--out", "-o", help="Run directory: writes RUN/outcomes.jsonl|json|md.")
]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens generated per answer (greedy).")]
Judge = Annotated[
    list[str] | None,
    typer.Option(
        "--judge",
        help="Judge, repeatable: refusal, on-topic, coherent, or module:function "
        "(default: all three built-ins; refusal is always on).",
    ),
]
OnTopicThreshold = Annotated[
    float | None,
    typer.Option(
        help="MiniLM similarity threshold of the on-topic judge "
        "(default: calibrated on the --calibrate set's answers)."
    ),
]
Calibrate = Annotated[
    str | None,
    typer.Option(
        help="Prompt set (benign) whose answers calibrate the on-topic judge "
        "(default: the first set named benign*)."
    ),
]
Pair = Annotated[
    list[str] | None,
    typer.Option(
        "--pair",
        help="SET: also ask the AdvBench behaviours carried by SET's prompts directly, "
        "as the set SET-direct (the paired effect).",
    ),
]
JudgeError = Annotated[
    Path | None,
    typer.Option(
        help="A judges.json from `jbtrace judges validate` (e.g. bench/results/judges.json): "
        "its error is stated beside every ASR, with the ASR corrected for it (Rogan–Gladen)."
    ),
]
MaxTokens = Annotated[int, typer.Option(help="Truncate prompts to this many tokens.")]
ReuseAnswers = Annotated[
    bool,
    typer.Option(
        help="Reuse answers already in RUN made by the same model and settings "
        "(greedy answers repeat): rejudge or extend a run without regenerating."
    ),
]


def _print(result) -> None:
    """The ASR table and the paired effects, on stderr."""
    table = Table("set", "n", "complied", "refused", "other", "ASR (95% CI)")
    for r in result.rates:
        lo, hi = r["asr_ci"]
        counts = (str(r[k]) for k in ("n", "complied", "refused", "other"))
        table.add_row(r["set"], *counts, f"{100 * r['asr']:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})")
    err.print(table)
    for p in result.paired:
        err.print(
            f"{p['direct']} vs {p['wrapped']}: {p['pairs']} pairs; complied with only when "
            f"wrapped {p['complied_wrapped_only']}, only when asked directly "
            f"{p['complied_direct_only']} (McNemar exact p = {p['mcnemar_p']:.3g})",
            highlight=False,
        )


@app.command("outcomes")
@groups(
    models={"model": Converted(Model, REQUIRED, lambda spec: (spec,)), **dict.fromkeys(LOAD)},
    prompts=("prompts", "text_field", "limit"),
    run={"out_dir": OutDir, "seed": None},
    generation={
        "max_new_tokens": MaxNewTokens,
        "chat_template": None,
        "max_tokens": MaxTokens,
        "batch_size": None,
    },
)
def outcomes_cmd(
    models: ModelOptions,
    prompts: PromptOptions,
    run: RunOptions = OUTCOMES_RUN,
    generation: GenerateOptions = GENERATION,
    judge: Judge = None,
    on_topic_threshold: OnTopicThreshold = None,
    calibrate: Calibrate = None,
    pair: Pair = None,
    reuse_answers: ReuseAnswers = True,
    judge_error: JudgeError = None,
    quiet: Quiet = False,
):
    """Generate each prompt's answer, judge it (refused / complied / other), and count attack
    success per set."""
    done = outcomes_run(
        prompts,
        models,
        generation,
        run,
        judge=judge,
        on_topic_threshold=on_topic_threshold,
        calibrate=calibrate,
        pair=pair,
        reuse_answers=reuse_answers,
        judge_error=judge_error,
        command=command_line(),
        progress=lambda: progress_bar(quiet),
        note=say,
    )
    _print(done.result)
    for path in done.paths:
        out.print(f"wrote {path}", highlight=False)
