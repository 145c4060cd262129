"""detect and score: per-layer jailbreak detectors into RUN/detect.*, and a saved detector
applied to new prompts (`jbtrace detect`, `jbtrace score`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.prompts import load_prompt_sets, pairs
from jbtrace.errors import UserError

if TYPE_CHECKING:  # the heavy stages load only when a command runs
    from jbtrace.detect.train import DetectOptions, ModelReport
    from jbtrace.prompts import PromptSet

Note = Callable[[str], None] | None
# opens the progress display, yielding ``start(description, total) -> advance(n)`` (or None)
Progress = Callable[[], contextlib.AbstractContextManager] | None
# detect's defaults beside the common ones: its own run directory, at most 200 prompts per set
DETECT_RUN = RunOptions(out_dir=Path("runs/detect"))
DETECT_PROMPTS = PromptOptions(limit=200)
# evaluation-only benign sets scored by every run (never fitted, ranked or thresholded on)
EVAL_SETS = "all"
EVAL_LIMIT = 100


@dataclass
class DetectResult:
    """What `detect_run` fitted and wrote."""

    reports: list[ModelReport]  # one per model
    options: DetectOptions
    prompt_sets: list[PromptSet]  # the training sets, then the test sets
    paths: list[Path]  # RUN/detect.*, then the saved detector (with --save)


@dataclass
class ScoreResult:
    """What `score_run` scored and wrote."""

    rows: list[dict]  # one per prompt and layer detector
    path: Path  # the scores file

    def flagged(self) -> dict[tuple, tuple[int, int]]:
        """(set, source, layer, feature) -> (prompts flagged, prompts scored), in row order."""
        flags: dict[tuple, list[bool]] = {}
        for r in self.rows:
            flags.setdefault((r["set"], r["source"], r["layer"], r["feature"]), []).append(
                r["flag"]
            )
        return {key: (sum(f), len(f)) for key, f in flags.items()}


def detect_options(
    *,
    source=None,
    kind=None,
    rank=None,
    classifier=None,
    layers=None,
    memory_gb: float = 2.0,
    save: Path | None = None,
    limit: int | None = 200,
    **options,
) -> DetectOptions:
    """DetectOptions from the command's values: repeatable options (None: the defaults),
    --layers text, --memory-gb, keep_fitted for --save, --limit also for the test sets."""
    from jbtrace.detect import train

    kw = {"sources": source, "kinds": kind, "ranks": rank, "classifiers": classifier}
    return train.DetectOptions(
        **{k: tuple(v) for k, v in kw.items() if v},
        layers=train.parse_layers(layers),
        memory_budget=int(memory_gb * 2**30),
        keep_fitted=save is not None,
        test_limit=limit,
        **options,
    )


def _check(models, options, out: RunOptions, save, save_classifier: str) -> None:
    """Refuse what cannot run before anything loads; a run of detect's own is prepared."""
    from jbtrace import publish
    from jbtrace.detect import detector
    from jbtrace.trace import runs

    out_dir = Path(out.out_dir)
    publish.recover(out_dir)  # a publish a kill interrupted is finished before the checks
    if not models.model:
        raise UserError("give at least one --model (see `jbtrace models`)")
    if save is not None and (len(models.model) != 1 or save_classifier not in options.classifiers):
        raise UserError(
            "--save needs exactly one --model and --save-classifier among the --classifier values"
        )
    if save is not None and save_classifier not in detector.SAVEABLE:
        raise UserError(
            f"--save-classifier {save_classifier!r}: only {', '.join(detector.SAVEABLE)} "
            "can be saved"
        )
    if save is not None:
        detector.check_target(Path(save), out.overwrite)
    if (out_dir / "detect.json").exists() and not out.overwrite:
        raise UserError(
            f"{out_dir} already holds detect results: give --overwrite to replace them, "
            "or another --out"
        )
    if not (out_dir / "trace.zarr").exists():  # a run of its own follows the run-directory rule
        runs.prepare(out_dir, "detect", {}, out.overwrite)
    # beside an extract's store, detect adds its files (replaced together, detect.json last)
    # and keeps the store


def detect_run(
    prompts: PromptOptions,
    models: ModelOptions,
    options: DetectOptions,
    out: RunOptions = DETECT_RUN,
    *,
    test_prompts: list[str] | None = None,
    label: list[str] | None = None,
    save: Path | None = None,
    save_all: bool = False,
    save_classifier: str = "logreg",
    command: str | None = None,
    progress: Progress = None,
    note: Note = None,
    plan_note: Note = None,
    allow_eval_sources: bool = False,
    eval_sets: str | None = EVAL_SETS,
    eval_limit: int | None = EVAL_LIMIT,
) -> DetectResult:
    """The whole of `jbtrace detect`: load the prompt sets and every model, fit and score the
    detectors (``options``: a DetectOptions, see `detect_options`), write RUN/detect.* into
    ``out.out_dir`` and, with ``save``, the best detector. ``label``: NAME=benign|jailbreak for
    the sets. Reports via ``note(line)`` (the prompt sets), ``plan_note(line)`` (each model's
    passes) and ``progress()`` (see `Progress`), opened once the prompts are loaded; an
    evaluation-only training set is refused unless ``allow_eval_sources``. ``eval_sets``
    (``all``, ``none`` or comma-separated names of ``builtin:eval:NAME``): evaluation-only benign
    sets scored at each detector's threshold, a seeded ``eval_limit`` of each."""
    from jbtrace.detect import train
    from jbtrace.models import load_model
    from jbtrace.prompts import catalog, load_prompts, parse_prompt_specs
    from jbtrace.views import outputs

    _check(models, options, out, save, save_classifier)
    labels, seed = pairs(label, "--label"), out.seed
    train_sets = prompts.load(seed, note=note)
    catalog.check_training_sets(train_sets, allow_eval_sources)
    tests = [
        load_prompts(n, s, text_field=prompts.text_field, seed=seed)
        for n, s in parse_prompt_specs(test_prompts or [])
    ]
    evals = [
        load_prompts(f"eval:{n}", f"builtin:eval:{n}", limit=eval_limit, seed=seed)
        for n in eval_set_names(eval_sets)
    ]
    tests += [s for s in evals if s.name not in {t.name for t in tests}]
    labels |= {s.name: "benign" for s in evals}
    reports = []
    with (progress or contextlib.nullcontext)() as start:
        for spec, name in models.labelled():
            lm = load_model(spec, name=name, seed=seed, **models.load_options())
            reports.append(
                train.detect_model(lm, train_sets, tests, options, labels, plan_note, start)
            )
    paths = outputs.write_detect(reports, out.out_dir, options, command)
    if save is not None:
        paths.append(
            _save(
                reports[0], lm, options, train_sets, save, save_classifier, save_all, models
            ).save(save, out.overwrite)
        )
    return DetectResult(reports, options, train_sets + tests, paths)


def eval_set_names(spec: str | None) -> list[str]:
    """Names of the evaluation-only benign sets: ``all``, ``none`` (or None) or a comma list."""
    from jbtrace.prompts import catalog

    known = [
        s.name.removeprefix("builtin:eval:")
        for s in catalog.CATALOG
        if s.role == catalog.EVALUATION_ONLY and s.name.startswith("builtin:eval:")
    ]
    if spec in (None, "", "none"):
        return []
    if spec == "all":
        return known
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"--eval-sets: unknown set {bad[0]!r}: choose from {', '.join(known)}")
    return names


def _save(report, lm, options, train_sets, save, classifier, every_layer, models):
    """The best-ranked detector (or all of them) of one model's report, to save."""
    from jbtrace.detect import detector

    config = {
        "spec": lm.spec,
        "name": lm.name,
        "seed": options.seed,
        "dtype": lm.provenance["dtype"],
        "revision": models.revision,
        "model_type": getattr(lm.model.config, "model_type", None),
        "n_layers": lm.n_layers,
    }
    texts = [t for s in train_sets for t in s.texts]
    return detector.from_report(report, options, classifier, config, every_layer, texts)


def check_scores_path(path: Path) -> None:
    """Refuse, before any work, a scores path that is a folder or lies under a file."""
    from jbtrace import publish

    if path.is_dir():
        raise UserError(f"--out {path}: that is a folder; scores go to a .csv or .json file")
    publish.check_folder(path.parent)


def score_run(
    *,
    detector: Path,
    prompts: list[str] | None,
    out_path: Path = Path("scores.csv"),
    model: str | None = None,
    text_field: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    allow_pickle: bool = False,
    progress: Progress = None,
    note: Note = None,
) -> ScoreResult:
    """The whole of `jbtrace score`: load a saved detector, its model (or ``model``) and the
    prompt sets, score every prompt with every layer detector, write ``out_path`` (.csv or
    .json). Reports via ``note(line)`` and ``progress()`` (see `Progress`), opened to score."""
    from jbtrace.defend.guard import check_detector
    from jbtrace.detect.detector import Detector, write_scores
    from jbtrace.models import load_model

    check_scores_path(Path(out_path))
    det = Detector.load(detector)
    if not prompts:
        raise UserError("give the prompts to score with --prompts NAME=SOURCE")
    sets = load_prompt_sets(prompts, text_field, limit, seed, note=note)
    info = det.config["model"]
    lm = load_model(
        model or info["spec"],
        name=info["name"],
        dtype=info["dtype"],
        device=device,
        revision=info["revision"],
        allow_pickle=allow_pickle,
        seed=info["seed"],
    )
    if model is None or model == info["spec"]:
        check_detector(det, lm)
    total = sum(len(s) for s in sets)
    with (progress or contextlib.nullcontext)() as start:
        rows = det.score(lm, sets, progress=start("scoring", total) if start else None)
    return ScoreResult(rows, write_scores(rows, out_path))
