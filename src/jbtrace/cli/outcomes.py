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
    load_prompt_sets,
    out,
    progress_bar,
)
from jbtrace.errors import UserError


@app.command("outcomes")
def outcomes_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Model spec (a causal LM), e.g. builtin:qwen2.5-coder-0.5b."
        ),
    ],
    prompts: Prompts = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory: writes RUN/outcomes.jsonl|json|md.")
    ] = Path("runs/outcomes"),
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per answer (greedy).")] = 64,
    judge: Annotated[
        list[str] | None,
        typer.Option(
            "--judge",
            help="Judge, repeatable: refusal, on-topic, coherent, or module:function (default: all three built-ins; refusal is always on).",
        ),
    ] = None,
    on_topic_threshold: Annotated[
        float | None,
        typer.Option(
            help="MiniLM similarity threshold of the on-topic judge (default: calibrated on the --calibrate set's answers)."
        ),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="Prompt set (benign) whose answers calibrate the on-topic judge (default: the first set named benign*)."
        ),
    ] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            "--pair",
            help="SET: also ask the AdvBench behaviours carried by SET's prompts directly, as the set SET-direct (the paired effect).",
        ),
    ] = None,
    chat_template: ChatTemplate = None,
    max_tokens: Annotated[int, typer.Option(help="Truncate prompts to this many tokens.")] = 2048,
    reuse_answers: Annotated[
        bool,
        typer.Option(
            help="Reuse answers already in RUN made by the same model and settings (greedy answers repeat): rejudge or extend a run without regenerating."
        ),
    ] = True,
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
    """Generate each prompt's answer, judge it (refused / complied / other), and count attack success per set."""
    from jbtrace.defend import attack_success as outcomes
    from jbtrace.defend.guard import GenerateOptions
    from jbtrace.models import load_model
    from jbtrace.prompts import advbench_behaviours
    from jbtrace.views.outputs import write_outcomes

    if not prompts:
        raise UserError("give the prompt sets to answer with --prompts NAME=SOURCE")
    sets = load_prompt_sets(prompts, text_field, limit, seed)
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
    with progress_bar(quiet) as start:
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
        err.print(
            f"reused {result.config['reused_answers']} answers already in {out_dir} (same model and settings)",
            highlight=False,
        )
    table = Table("set", "n", "complied", "refused", "other", "ASR (95% CI)")
    for r in result.rates:
        lo, hi = r["asr_ci"]
        table.add_row(
            r["set"],
            str(r["n"]),
            str(r["complied"]),
            str(r["refused"]),
            str(r["other"]),
            f"{100 * r['asr']:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})",
        )
    err.print(table)
    for p in result.paired:
        err.print(
            f"{p['direct']} vs {p['wrapped']}: {p['pairs']} pairs; of {p['refused_direct']} refused directly, "
            f"{p['refused_direct_answered_wrapped']} answered when wrapped; "
            f"{p['answered_direct_refused_wrapped']} the other way (McNemar exact p = {p['mcnemar_p']:.3g})",
            highlight=False,
        )
    for path in write_outcomes(result, out_dir, command_line()):
        out.print(f"wrote {path}", highlight=False)
