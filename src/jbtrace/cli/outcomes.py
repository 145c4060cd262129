"""outcomes: what the model answers to each prompt, judged; ASR per set; direct against wrapped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jbtrace.cli.common import (
    AllowPickle,
    BatchSize,
    ChatTemplate,
    Device,
    Dtype,
    Limit,
    Prompts,
    Quiet,
    RemoteCode,
    Revision,
    Seed,
    TextField,
    app,
    command_line,
    err,
    out,
    progress_bar,
    say,
)

Model = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Model spec (a causal LM), e.g. builtin:qwen2.5-coder-0.5b."
    ),
]
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
            f"{p['direct']} vs {p['wrapped']}: {p['pairs']} pairs; of {p['refused_direct']} "
            f"refused directly, {p['refused_direct_answered_wrapped']} answered when wrapped; "
            f"{p['answered_direct_refused_wrapped']} the other way "
            f"(McNemar exact p = {p['mcnemar_p']:.3g})",
            highlight=False,
        )


@app.command("outcomes")
def outcomes_cmd(
    model: Model,
    prompts: Prompts = None,
    out_dir: OutDir = Path("runs/outcomes"),
    max_new_tokens: MaxNewTokens = 64,
    judge: Judge = None,
    on_topic_threshold: OnTopicThreshold = None,
    calibrate: Calibrate = None,
    pair: Pair = None,
    chat_template: ChatTemplate = None,
    max_tokens: MaxTokens = 2048,
    reuse_answers: ReuseAnswers = True,
    text_field: TextField = None,
    limit: Limit = None,
    seed: Seed = 0,
    dtype: Dtype = None,
    device: Device = "cpu",
    revision: Revision = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: RemoteCode = False,
    batch_size: BatchSize = 8,
    quiet: Quiet = False,
):
    """Generate each prompt's answer, judge it (refused / complied / other), and count attack
    success per set."""
    options = {name: value for name, value in locals().items() if name != "quiet"}
    from jbtrace.commands import outcomes_run

    done = outcomes_run(
        **options, command=command_line(), progress=lambda: progress_bar(quiet), note=say
    )
    _print(done.result)
    for path in done.paths:
        out.print(f"wrote {path}", highlight=False)
