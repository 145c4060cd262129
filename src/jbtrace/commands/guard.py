"""guard: flag prompts with a saved detector, generate with jailbreak-susceptible blocks bypassed,
judge, write RUN/guard.jsonl|json|md (`jbtrace guard`)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.prompts import load_prompt_sets
from jbtrace.errors import UserError
from jbtrace.models.presets import GUARD_PRESETS

if TYPE_CHECKING:
    from jbtrace.defend.evaluate import GuardOptions


@dataclass(frozen=True)
class GuardRun:
    """What `guard_run` did: the evaluation, the files written, the prompt sets and the rates of
    the headline verdict (``complied``, the one verdict over the combined judges, else the
    first judge)."""

    result: object
    paths: list[Path]
    prompt_sets: list
    headline: str
    rates: list[dict]


def guard_run(
    detector_dir: Path,
    options: GuardOptions | None = None,
    *,
    out_dir: Path = Path("runs/guard"),
    command: str = "",
    model: str | None = None,
    prompts: list[str] | None = None,
    preset: str | None = None,
    labels: dict[str, str] | None = None,
    calibration: str = "builtin:benign",
    text_field: str | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
    judge_error: Path | None = None,
    steer=None,
    progress_scope=None,
    note=None,
) -> GuardRun:
    """The whole of `jbtrace guard` (detector, prompts, model, guarded generation, judges,
    RUN/guard.*); ``options``: a `defend.evaluate.GuardOptions` (default: its defaults);
    ``judge_error``: a judges.json (`jbtrace judges validate`) stated beside every rate;
    ``steer``: a `defend.steer.SteerOptions` for ``steer`` mode (fitted on prompts not evaluated).
    Reports via ``note(line)`` and ``progress_scope()``, a context entered just around the
    evaluation that yields ``progress(what, total)->advance``."""
    from jbtrace.commands.kept import Kept
    from jbtrace.defend import evaluate as E
    from jbtrace.detect.detector import Detector
    from jbtrace.detect.train import resolve_labels
    from jbtrace.prompts import load_prompts
    from jbtrace.views.outputs import write_guard

    if preset not in (None, *GUARD_PRESETS):
        raise UserError(f"--preset {preset!r}: the only preset is 'paper'")
    if preset is not None:
        chosen = GUARD_PRESETS[preset]
        model, prompts = model or chosen["model"], prompts or list(chosen["prompts"])
    from jbtrace.defend.validation import read_error

    opts = options or E.GuardOptions()
    check_request(out_dir, opts.limit, opts.threshold, opts.on_topic_threshold)
    error = read_error(judge_error) if judge_error else None
    det = Detector.load(detector_dir)
    if not prompts:
        raise UserError("give the prompts with --prompts NAME=SOURCE (or --preset paper)")
    seed = opts.seed
    # --limit applies after the detector's prompts are left out
    sets = load_prompt_sets(prompts, text_field, None, seed, note=note)
    names = [s.name for s in sets]
    resolved = resolve_labels(names, labels or {}, training=False)
    lm = _load_model(det, model, device, allow_pickle)
    check_new_tokens(lm, opts.generation.max_new_tokens)
    cal = load_prompts("calibration", calibration, seed=seed) if "on-topic" in opts.judges else None
    steering, fitted = _steering(
        lm, steer, opts, E.without_training(sets, det, opts.limit, seed)[0]
    )
    with (progress_scope or nullcontext)() as progress:
        result = E.evaluate_guard(
            lm, det, sets, resolved, opts, cal, progress, error, steering,
            keep=lambda settings: Kept(out_dir, "guard", settings),
        )  # fmt: skip
    if fitted:
        result.summary["steering"] = fitted
    paths = list(write_guard(result, out_dir, command))
    Kept(out_dir, "guard", {}).forget()  # the answers are in guard.jsonl now
    headline = "complied" if opts.combine else opts.judges[0]
    rates = [r for r in result.summary["rates"] if r["judge"] == headline]
    return GuardRun(result, paths, sets, headline, rates)


def _steering(lm, steer, options, sets):
    """The refusal-direction steering of ``steer`` when ``steer`` mode runs (else None, None),
    fitted on prompts none of ``sets`` (the prompts to be evaluated) holds."""
    from jbtrace.defend.steer import fit_steering

    if "steer" not in options.modes:
        return None, None
    if steer is None:
        raise UserError("--mode steer needs a refusal direction: give --steer-layer")
    evaluated = {t for s in sets for t in s.texts}
    return fit_steering(lm, steer, evaluated, options.generation.max_tokens)


def check_request(out_dir: Path, limit: int | None, *thresholds: float | None) -> None:
    """Refuse, before any work, a --out that is a file or a folder of other files (guard writes
    report.html there), a --limit below 1 and a threshold that is not a finite number."""
    from jbtrace import publish
    from jbtrace.trace import runs

    publish.check_folder(out_dir)
    if publish.others(Path(out_dir)) and not runs.is_run(Path(out_dir)):
        raise UserError(
            f"{out_dir} is not empty and is not a jbtrace run: not writing guard.* and "
            "report.html there; choose another --out"
        )
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give at least 1 prompt per set")
    bad = [t for t in thresholds if t is not None and not math.isfinite(t)]
    if bad:
        raise UserError(f"threshold {bad[0]}: give a finite number")


def check_new_tokens(lm, max_new_tokens: int) -> None:
    """Refuse more new tokens than the model has positions for."""
    if lm.max_positions is not None and max_new_tokens >= lm.max_positions:
        raise UserError(
            f"--max-new-tokens {max_new_tokens}: {lm.name} reads at most {lm.max_positions} "
            "tokens, prompt included"
        )


def _load_model(det, model, device, allow_pickle):
    """The detector's model (or ``model``) loaded as the detector was trained on it."""
    from jbtrace.models import load_model

    info = det.config["model"]
    return load_model(
        model or info["spec"],
        dtype=info["dtype"],
        device=device,
        revision=info["revision"],
        allow_pickle=allow_pickle,
        seed=info["seed"],
    )
