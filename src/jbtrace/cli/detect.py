"""detect and score: per-layer jailbreak detectors, and saved detectors applied to new prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jbtrace.cli.common import (
    AllowPickle,
    Device,
    Limit,
    Out,
    Prompts,
    Quiet,
    Seed,
    TextField,
    app,
    command_line,
    err,
    load_prompt_sets,
    model_labels,
    out,
    pairs,
    progress_bar,
)
from jbtrace.cli.report import publish
from jbtrace.cli.run import ENGINE_OPTIONS, with_extract_options
from jbtrace.errors import UserError


@app.command("detect")
@with_extract_options(without=(*ENGINE_OPTIONS, "stat", "align", "bins", "bucket", "padding_side"))
def detect_cmd(
    *,
    out_dir: Out = Path("runs/detect"),
    test_prompts: Annotated[
        list[str] | None,
        typer.Option(
            "--test-prompts",
            "-t",
            help="NAME=SOURCE, repeatable: score the fitted detectors on other prompt sets (TPR on jailbreak sets, FPR on benign sets); prompts in the training sets are removed first, then --limit applies.",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "--test-label",
            help="NAME=benign|jailbreak for a set whose name does not start with benign/jailbreak.",
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Where layers are read, repeatable: resid (default), attn_out, mlp_out, mixer.",
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Layers, e.g. 1,3,5 or 0:7, or all (default: all of a model with at most 8, else 8 evenly spaced)."
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="Feature kind, repeatable: cp, last, mean (default: all)."),
    ] = None,
    rank: Annotated[
        list[int] | None,
        typer.Option(
            "--rank", help="CP rank, repeatable (default 8; e.g. --rank 4 --rank 8 --rank 16)."
        ),
    ] = None,
    classifier: Annotated[
        list[str] | None,
        typer.Option("--classifier", help="Repeatable: logreg (default), linsvm, rbfsvm, forest."),
    ] = None,
    folds: Annotated[
        int,
        typer.Option(
            help="Stratified k-fold cross-validation folds, grouped by near-duplicate cluster."
        ),
    ] = 5,
    test_split: Annotated[
        float,
        typer.Option(
            help="Fraction of training prompts held out (grouped by near-duplicate cluster) and scored once at the end."
        ),
    ] = 0.0,
    protocol: Annotated[
        str,
        typer.Option(
            help="cv, or cross-source: also leave each prompt source out in turn (each benign and each jailbreak --prompts set, and the per-prompt sources of a corpus), train on the rest and score it; ranking and --save use the worst held-out source."
        ),
    ] = "cv",
    target_fpr: Annotated[
        float,
        typer.Option(
            help="Operating point: the threshold flags this share of held-out benign prompts; all rates are reported there."
        ),
    ] = 0.01,
    near_duplicate: Annotated[
        float,
        typer.Option(
            help="Word 5-gram Jaccard at which prompts count as near-duplicates (kept on one side of every split; removed from test sets)."
        ),
    ] = 0.8,
    match_length: Annotated[
        bool,
        typer.Option(
            help="Subsample the training sets so benign and jailbreak token lengths match (coarsened exact matching, 10 quantile bins)."
        ),
    ] = False,
    test_min_tokens: Annotated[
        int, typer.Option(help="Score only test prompts with at least this many tokens.")
    ] = 0,
    cp_positions: Annotated[
        int, typer.Option(help="Token positions kept for CP (start-aligned, zero padded).")
    ] = 64,
    project_dim: Annotated[
        int | None, typer.Option(help="Seeded random projection of the hidden mode for CP.")
    ] = None,
    cp_iters: Annotated[int, typer.Option(help="Maximum CP-ALS sweeps.")] = 100,
    memory_gb: Annotated[
        float,
        typer.Option(help="Feature memory per pass over the prompts; layers are grouped to fit."),
    ] = 2.0,
    save: Annotated[
        Path | None,
        typer.Option(
            help="Write the best-ranked detector of --save-classifier here (safetensors + JSON)."
        ),
    ] = None,
    save_all: Annotated[
        bool,
        typer.Option(
            help="With --save: every layer and feature of --save-classifier, the best-ranked first."
        ),
    ] = False,
    save_classifier: Annotated[
        str, typer.Option(help="Classifier of the saved detectors: logreg or linsvm.")
    ] = "logreg",
    limit: Annotated[
        int | None, typer.Option(help="Seeded random sample of at most N prompts per set.")
    ] = 200,
    **common,
):
    """Per-layer jailbreak detectors (CP factors, last / mean states) cross-validated: RUN/detect.json|md|png|pdf."""
    from jbtrace.detect import detector
    from jbtrace.detect import train as detect
    from jbtrace.models import load_model
    from jbtrace.prompts import load_prompts, parse_prompt_specs
    from jbtrace.views import outputs

    model, prompts, text_field, seed, quiet = (
        common[k] for k in ("model", "prompts", "text_field", "seed", "quiet")
    )
    dtype, device, revision = common["dtype"], common["device"], common["revision"]
    max_tokens, batch_size = common["max_tokens"], common["batch_size"]
    kw = {"sources": source, "kinds": kind, "ranks": rank, "classifiers": classifier}
    options = detect.DetectOptions(
        **{k: tuple(v) for k, v in kw.items() if v},
        layers=detect.parse_layers(layers),
        folds=folds,
        test_split=test_split,
        protocol=protocol,
        target_fpr=target_fpr,
        near_duplicate=near_duplicate,
        match_length=match_length,
        test_min_tokens=test_min_tokens,
        cp_positions=cp_positions,
        project_dim=project_dim,
        cp_iters=cp_iters,
        max_tokens=max_tokens,
        chat_template=common["chat_template"],
        batch_size=batch_size,
        memory_budget=int(memory_gb * 2**30),
        seed=seed,
        keep_fitted=save is not None,
        test_limit=limit,
    )
    if not model:
        raise UserError("give at least one --model (see `jbtrace models`)")
    if save is not None and (len(model) != 1 or save_classifier not in options.classifiers):
        raise UserError(
            "--save needs exactly one --model and --save-classifier among the --classifier values"
        )
    if save is not None and save_classifier not in detector.SAVEABLE:
        raise UserError(
            f"--save-classifier {save_classifier!r}: only {', '.join(detector.SAVEABLE)} can be saved"
        )
    from jbtrace.trace import runs

    if (out_dir / "detect.json").exists() and not common["overwrite"]:
        raise UserError(
            f"{out_dir} already holds detect results: give --overwrite to replace them, or another --out"
        )
    if not (out_dir / "trace.zarr").exists():  # a run of its own follows the run-directory rule
        runs.prepare(out_dir, "detect", {}, common["overwrite"])
    # beside an extract's store, detect adds its files (replaced together, detect.json last) and keeps the store
    labels = pairs(label, "--label")
    train = load_prompt_sets(prompts, text_field, limit, seed)
    tests = [
        load_prompts(n, s, text_field=text_field, seed=seed)
        for n, s in parse_prompt_specs(test_prompts or [])
    ]
    reports = []
    with progress_bar(quiet) as start:
        for spec, name in zip(model, model_labels(model, common["model_name"])):
            lm = load_model(
                spec,
                name=name,
                dtype=dtype,
                device=device,
                revision=revision,
                allow_pickle=common["allow_pickle"],
                trust_remote_code=common["trust_remote_code"],
                seed=seed,
            )
            note = (lambda m: None) if quiet else (lambda m: err.print(m, highlight=False))
            reports.append(detect.detect_model(lm, train, tests, options, labels, note, start))
    paths = outputs.write_detect(reports, out_dir, options, command_line())
    if save is not None:
        config = {
            "spec": lm.spec,
            "name": lm.name,
            "seed": seed,
            "dtype": lm.provenance["dtype"],
            "revision": revision,
        }
        paths.append(
            detector.from_report(
                reports[0],
                options,
                save_classifier,
                config,
                save_all,
                [t for s in train for t in s.texts],
            ).save(save)
        )
    for path in paths:
        out.print(f"wrote {path}", highlight=False)
    publish(out_dir, prompt_sets=train + tests, seed=seed)


@app.command("score")
def score_cmd(
    detector_dir: Annotated[
        Path, typer.Option("--detector", help="A detector saved by `jbtrace detect --save`.")
    ],
    prompts: Prompts = None,
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Scores: .csv (default) or .json, one row per prompt and layer detector.",
        ),
    ] = Path("scores.csv"),
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model spec, if not the one the detector was fitted on (e.g. a moved directory).",
        ),
    ] = None,
    text_field: TextField = None,
    limit: Limit = None,
    seed: Seed = 0,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    quiet: Quiet = False,
):
    """Per-layer jailbreak probabilities of new prompts from a saved detector."""
    from jbtrace.detect.detector import Detector, write_scores
    from jbtrace.models import load_model

    det = Detector.load(detector_dir)
    if not prompts:
        raise UserError("give the prompts to score with --prompts NAME=SOURCE")
    sets = load_prompt_sets(prompts, text_field, limit, seed)
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
    with progress_bar(quiet) as start:
        rows = det.score(lm, sets, progress=start("scoring", sum(len(s) for s in sets)))
    table, flagged = Table("set", "source", "layer", "feature", "flagged"), {}
    for r in rows:
        flagged.setdefault((r["set"], r["source"], r["layer"], r["feature"]), []).append(r["flag"])
    for key, flags in flagged.items():
        table.add_row(*map(str, key), f"{sum(flags)}/{len(flags)}")
    err.print(table)
    out.print(f"wrote {write_scores(rows, out_path)}", highlight=False)
