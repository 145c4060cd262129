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
    Prompts,
    Quiet,
    Seed,
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
from jbtrace.commands import detect_options, detect_run, score_run
from jbtrace.commands.detect import DETECT_PROMPTS, DETECT_RUN, EVAL_LIMIT, EVAL_SETS
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.report import report_run
from jbtrace.trace.extract import ExtractOptions

# detect's own options
TestPrompts = Annotated[
    list[str] | None,
    typer.Option(
        "--test-prompts",
        "-t",
        help="NAME=SOURCE, repeatable: score the fitted detectors on other prompt sets (TPR on "
        "jailbreak sets, FPR on benign sets); prompts in the training sets are removed first, "
        "then --limit applies.",
    ),
]
Label = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        "--test-label",
        help="NAME=benign|jailbreak for a set whose name does not start with benign/jailbreak.",
    ),
]
Source = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="Where layers are read, repeatable: resid (default), attn_out, mlp_out, mixer.",
    ),
]
Layers = Annotated[
    str | None,
    typer.Option(
        help="Layers, e.g. 1,3,5 or 0:7, or all (default: all of a model with at most 8, else 8 "
        "evenly spaced)."
    ),
]
Kind = Annotated[
    list[str] | None,
    typer.Option("--kind", help="Feature kind, repeatable: cp, last, mean (default: all)."),
]
Rank = Annotated[
    list[int] | None,
    typer.Option(
        "--rank", help="CP rank, repeatable (default 8; e.g. --rank 4 --rank 8 --rank 16)."
    ),
]
Classifier = Annotated[
    list[str] | None,
    typer.Option(
        "--classifier",
        help="Repeatable: logreg (default), linsvm, rbfsvm, forest, diffmean (projection on the "
        "difference of class means: a one-dimensional detector).",
    ),
]
Folds = Annotated[
    int,
    typer.Option(
        help="Stratified k-fold cross-validation folds, grouped by near-duplicate cluster."
    ),
]
TestSplit = Annotated[
    float,
    typer.Option(
        help="Fraction of training prompts held out (grouped by near-duplicate cluster) and scored "
        "once at the end."
    ),
]
Protocol = Annotated[
    str,
    typer.Option(
        help="auto (default: cross-source where some source can be held out, else cv), cv "
        "(grouped folds), or cross-source: each prompt source (each --prompts set, and the "
        "per-prompt sources of a corpus) left out in turn as the outer split around the "
        "selection; the recommended detector's reported numbers are these outer ones."
    ),
]
TargetFpr = Annotated[
    float,
    typer.Option(
        help="Operating point: the threshold flags this share of held-out benign prompts; all "
        "rates are reported there."
    ),
]
NearDuplicate = Annotated[
    float,
    typer.Option(
        help="Word 5-gram Jaccard at which prompts count as near-duplicates (kept on one side of "
        "every split; removed from test sets)."
    ),
]
MatchLength = Annotated[
    bool,
    typer.Option(
        help="Subsample the training sets so benign and jailbreak token lengths match (coarsened "
        "exact matching, 10 quantile bins)."
    ),
]
TestMinTokens = Annotated[
    int, typer.Option(help="Score only test prompts with at least this many tokens.")
]
CpPositions = Annotated[
    int, typer.Option(help="Token positions kept for CP (start-aligned, zero padded).")
]
ProjectDim = Annotated[
    int | None, typer.Option(help="Seeded random projection of the hidden mode for CP.")
]
CpIters = Annotated[int, typer.Option(help="Maximum CP-ALS sweeps.")]
MemoryGb = Annotated[
    float,
    typer.Option(help="Feature memory per pass over the prompts; layers are grouped to fit."),
]
Save = Annotated[
    Path | None,
    typer.Option(
        help="Write the best-ranked detector of --save-classifier here (safetensors + JSON)."
    ),
]
SaveAll = Annotated[
    bool,
    typer.Option(
        help="With --save: every layer and feature of --save-classifier, the best-ranked first."
    ),
]
SaveClassifier = Annotated[
    str, typer.Option(help="Classifier of the saved detectors: logreg or linsvm.")
]
EvalSets = Annotated[
    str,
    typer.Option(
        help="Evaluation-only benign sets (builtin:eval:NAME) scored at every detector's "
        "threshold, never fitted or ranked on: all (default), none, or names, e.g. "
        "mtbench,ifeval."
    ),
]
EvalLimit = Annotated[int, typer.Option(help="Seeded sample of each evaluation-only set.")]
TOKENS = ExtractOptions()  # detect reads only the tokenization and batch size of these
AllowEvalSources = Annotated[
    bool,
    typer.Option(
        help="Let evaluation-only sources (public benchmarks, builtin:eval:*) train the "
        "detectors; without it they are refused as --prompts."
    ),
]


@app.command("detect")
@groups(tokens=("max_tokens", "batch_size", "chat_template"))
def detect_cmd(
    models: ModelOptions,
    prompts: PromptOptions = DETECT_PROMPTS,
    run: RunOptions = DETECT_RUN,
    tokens: ExtractOptions = TOKENS,
    quiet: Quiet = False,
    test_prompts: TestPrompts = None,
    label: Label = None,
    source: Source = None,
    layers: Layers = None,
    kind: Kind = None,
    rank: Rank = None,
    classifier: Classifier = None,
    folds: Folds = 5,
    test_split: TestSplit = 0.0,
    protocol: Protocol = "auto",
    target_fpr: TargetFpr = 0.01,
    near_duplicate: NearDuplicate = 0.8,
    match_length: MatchLength = False,
    test_min_tokens: TestMinTokens = 0,
    cp_positions: CpPositions = 64,
    project_dim: ProjectDim = None,
    cp_iters: CpIters = 100,
    memory_gb: MemoryGb = 2.0,
    save: Save = None,
    save_all: SaveAll = False,
    save_classifier: SaveClassifier = "logreg",
    allow_eval_sources: AllowEvalSources = False,
    eval_sets: EvalSets = EVAL_SETS,
    eval_limit: EvalLimit = EVAL_LIMIT,
):
    """Per-layer jailbreak detectors (CP factors, last / mean states) cross-validated: RUN/detect.json|md|png|pdf."""  # noqa: E501
    options = detect_options(
        max_tokens=tokens.max_tokens,
        chat_template=tokens.chat_template,
        batch_size=tokens.batch_size,
        seed=run.seed,
        source=source,
        kind=kind,
        rank=rank,
        classifier=classifier,
        layers=layers,
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
        memory_gb=memory_gb,
        save=save,
        limit=prompts.limit,
    )
    result = detect_run(
        prompts,
        models,
        options,
        run,
        test_prompts=test_prompts,
        label=label,
        save=save,
        save_all=save_all,
        save_classifier=save_classifier,
        command=command_line(),
        progress=lambda: progress_bar(quiet),
        note=say,
        plan_note=None if quiet else say,
        allow_eval_sources=allow_eval_sources,
        eval_sets=eval_sets,
        eval_limit=eval_limit,
    )
    for path in result.paths:
        out.print(f"wrote {path}", highlight=False)
    print_report(report_run(run.out_dir, prompt_sets=result.prompt_sets, seed=run.seed))


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
    options = {k: v for k, v in locals().items() if k not in ("detector_dir", "quiet")}
    result = score_run(
        detector=detector_dir, **options, progress=lambda: progress_bar(quiet), note=say
    )
    table = Table("set", "source", "layer", "feature", "flagged")
    for key, (flagged, scored) in result.flagged().items():
        table.add_row(*map(str, key), f"{flagged}/{scored}")
    err.print(table)
    out.print(f"wrote {result.path}", highlight=False)
