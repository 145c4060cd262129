"""Per-layer jailbreak detectors: CP factors and pooled states, evaluated so they cannot flatter.

For each (source, layer) of a model, features are captured (see ``features``), then every
feature (``cp-rR``, ``last``, ``mean``) × classifier pair is evaluated by ``evaluate``:
stratified folds grouped by near-duplicate cluster, and with ``protocol="cross-source"`` each
prompt source left out in turn (``auto``: where a source can be held out), with outer splits
around the ranking (``nested``). The text baselines (``baselines``: length, surface counts,
hashed word n-grams) go through the same protocol. All rates are at one operating point: the
threshold that flags ``target_fpr`` of the out-of-fold benign prompts. Test sets lose every
prompt that is a near-duplicate of a training prompt before they are scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jbtrace.detect import features as F
from jbtrace.detect.baselines import baseline_features
from jbtrace.detect.evaluate import CLASSIFIERS, Design, apply, evaluate
from jbtrace.detect.prompt_data import (  # noqa: F401 (re-exported: detect's prompt helpers)
    LABELS,
    Prompts,
    add_tests,
    length_summary,
    prompt_sources,
    resolve_labels,
    training_prompts,
)
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel
from jbtrace.models.tokens import MAX_TOKENS
from jbtrace.prompts import PromptSet, neardup

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "cv", "cross-source")
# layers read when none are asked: all of a shallow model, else evenly spaced
DEFAULT_MAX_LAYERS = 8


@dataclass(frozen=True)
class DetectOptions:
    sources: tuple[str, ...] = ("resid",)
    # None: all of a shallow model, else DEFAULT_MAX_LAYERS evenly spaced; "all"
    layers: tuple[int, ...] | str | None = None
    kinds: tuple[str, ...] = ("cp", "last", "mean")
    ranks: tuple[int, ...] = (8,)
    classifiers: tuple[str, ...] = ("logreg",)
    folds: int = 5
    # fraction of training prompts held out (grouped, stratified), scored once at the end
    test_split: float = 0.0
    protocol: str = "auto"  # cross-source where some source can be held out, else cv
    # operating point: threshold flagging this share of held-out benign prompts
    target_fpr: float = 0.01
    # word 5-gram Jaccard at or above which prompts share a cluster
    near_duplicate: float = neardup.THRESHOLD
    match_length: bool = False
    test_min_tokens: int = 0
    test_limit: int | None = None  # seeded sample of each test set, taken after the filters above
    cp_positions: int = 64
    project_dim: int | None = None
    cp_iters: int = 100
    max_tokens: int = MAX_TOKENS
    # None: where the tokenizer has one; the prompt as the model sees it before answering
    chat_template: bool | None = None
    batch_size: int = 8
    memory_budget: int = 2 * 2**30
    seed: int = 0
    keep_fitted: bool = False  # keep the refitted detectors (for saving)

    def __post_init__(self):
        for name, known in (
            ("sources", F.SOURCES),
            ("kinds", F.KINDS),
            ("classifiers", CLASSIFIERS),
        ):
            values = getattr(self, name)
            if not values:
                raise UserError(f"give at least one of --{name[:-1]}")
            bad = [v for v in values if v not in known]
            if bad:
                raise UserError(f"unknown {name[:-1]} {bad[0]!r}: choose from {', '.join(known)}")
        if self.protocol not in PROTOCOLS:
            raise UserError(
                f"unknown protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}"
            )
        if self.folds < 2:
            raise UserError("--folds must be at least 2")
        if not 0 <= self.test_split < 1:
            raise UserError("--test-split must be a fraction in [0, 1)")
        if not 0 < self.target_fpr < 0.5:
            raise UserError("--target-fpr must be a fraction in (0, 0.5)")
        if not 0 < self.near_duplicate <= 1:
            raise UserError("--near-duplicate must be a Jaccard similarity in (0, 1]")
        if "cp" in self.kinds and (not self.ranks or min(self.ranks) < 1):
            raise UserError("--rank must be at least 1")
        for name in ("cp_positions", "cp_iters", "max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.project_dim is not None and self.project_dim < 1:
            raise UserError("--project-dim must be at least 1")

    def features(self) -> list[tuple[str, str, int | None]]:
        """(label, kind, rank) of every feature set: one per CP rank, then last, mean."""
        out = [(f"cp-r{r}", "cp", r) for r in self.ranks] if "cp" in self.kinds else []
        return out + [(k, k, None) for k in self.kinds if k != "cp"]


# ---------------------------------------------------------------- one model, end to end


@dataclass
class ModelReport:
    """Everything ``detect_model`` measured on one model."""

    name: str
    label: str
    spec: str
    random_init: bool
    rows: list[dict]  # one per (source, layer, feature, classifier)
    baseline: list[dict]  # length-only, one per classifier
    plan: dict
    data: dict
    notes: list[str] = field(default_factory=list)
    # (source, layer, feature, classifier) -> evaluate.Fitted
    fitted: dict = field(default_factory=dict)
    projection: np.ndarray | None = None
    seconds: float = 0.0


def parse_layers(text: str | None) -> tuple[int, ...] | str | None:
    """``"1,3,5"``, ``"0:7"`` (end exclusive) or both → sorted indices; None/"" → default; all."""
    if not text:
        return None
    if text == "all":
        return "all"
    layers = set()
    try:
        for part in text.split(","):
            if ":" in part:
                lo, hi = (int(x) for x in part.split(":"))
                layers.update(range(lo, hi))
            else:
                layers.add(int(part))
    except ValueError:
        raise UserError(f"--layers {text!r}: expected e.g. 1,3,5 or 0:7") from None
    if not layers or min(layers) < 0:
        raise UserError(f"--layers {text!r}: need non-negative layer indices")
    return tuple(sorted(layers))


def default_layers(n: int) -> list[int]:
    """All layers of a shallow model, else DEFAULT_MAX_LAYERS evenly spaced from 1 to the last."""
    if n <= DEFAULT_MAX_LAYERS:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(1, n - 1, DEFAULT_MAX_LAYERS)})


def _requests(lm: LoadedModel, options: DetectOptions, notes: list[str]) -> list[tuple[str, int]]:
    requests = []
    for source in options.sources:
        pts = F.points(lm, source)
        if options.layers in (None, "all"):
            every = range(len(pts)) if options.layers == "all" else default_layers(len(pts))
            wanted = [layer for layer in every if pts[layer] is not None]
        else:
            wanted = options.layers
        missing = [layer for layer in wanted if layer >= len(pts) or pts[layer] is None]
        if missing:
            notes.append(
                f"{lm.name}: no {source} at layer {', '.join(map(str, missing))} (skipped)"
            )
        requests += [(source, layer) for layer in wanted if layer not in missing]
    if not requests:
        raise UserError(
            f"{lm.name}: none of the asked layers exist (it has layers 0..{lm.n_layers - 1})"
        )
    return requests


def _split_sets(train_sets, test_sets, labels):
    """Labels of every training and test set; a set name may not be on both sides."""
    train_labels = resolve_labels([s.name for s in train_sets], labels, training=True)
    test_labels = resolve_labels([s.name for s in test_sets], labels, training=False)
    clash = {s.name for s in train_sets} & {s.name for s in test_sets}
    if clash:
        raise UserError(f"prompt set name {sorted(clash)[0]!r} is used for training and testing")
    return train_labels, test_labels


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _design(lm, p: Prompts, options, notes: list[str], data: dict) -> Design:
    """The evaluation design of the training prompts (sources held out under cross-source;
    ``auto`` is cross-source where some source can be held out, else cv)."""
    design = Design(
        y=p.y[p.keep],
        clusters=p.clusters[p.keep],
        lengths=p.full[p.keep],
        sources=p.sources[p.keep],
        classifiers=options.classifiers,
        folds=options.folds,
        seed=options.seed,
        target_fpr=options.target_fpr,
        cp_kwargs={"n_iter_max": options.cp_iters, "device": str(lm.device)},
    )
    ok, alone = design.held_out_sources()
    protocol = options.protocol
    if protocol == "auto":
        protocol = "cross-source" if ok else "cv"
        if not ok:
            notes.append("no class has two sources, so the protocol is cv (grouped folds)")
    data["protocol"] = protocol
    if protocol == "cv":
        design.sources = None
        return design
    if not ok:
        raise UserError(
            "--protocol cross-source needs two sources of one class (two benign or two "
            "jailbreak --prompts sets, or a set whose prompts carry sources)"
        )
    notes += [
        f"source {s} is the only one of its class: it is held out in grouped folds of its own"
        for s in alone
    ]
    data["held_out_sources"], data["not_held_out"] = ok, alone
    return design


def _plan(lm, options, notes, n_prompts: int, n_train: int, on_note) -> tuple[list, dict]:
    """The layer reads in passes that fit the memory budget, and the plan's sizes (logged)."""
    requests = _requests(lm, options, notes)
    hidden = F.hidden_size(lm)
    per_request = F.request_bytes(
        n_prompts, hidden, options.kinds, options.cp_positions, options.project_dim
    )
    passes = F.plan_passes(requests, per_request, options.memory_budget)
    cp_bytes = (
        n_train * options.cp_positions * (options.project_dim or hidden) * F.BYTES
        if "cp" in options.kinds
        else 0
    )
    plan = {
        "prompts": n_prompts,
        "layer_reads": len(requests),
        "hidden": hidden,
        "bytes_per_layer_read": per_request,
        "passes": len(passes),
        "feature_bytes_per_pass": max(len(p) for p in passes) * per_request,
        "cp_tensor_bytes": cp_bytes,
        "budget_bytes": options.memory_budget,
    }
    message = (
        f"{lm.name}: {n_prompts} prompts, {len(requests)} layer reads in {len(passes)} pass(es); "
        f"features {_gib(plan['feature_bytes_per_pass'])} per pass"
        + (f", CP tensor {_gib(cp_bytes)} per fit" if cp_bytes else "")
    )
    log.info(message)
    if on_note:
        on_note(message)
    return passes, plan


@dataclass
class _Scorer:
    """Evaluates one feature set on the training prompts, scores the test sets, adds the rows."""

    report: ModelReport
    design: Design
    n_train: int  # the first n_train captured prompts train; the test sets follow
    spans: dict[str, slice]  # test set -> its captured prompts
    test_y: dict[str, int]
    test_lengths: dict[str, np.ndarray]
    keep_fitted: bool

    def __call__(self, X: np.ndarray, feature, where: dict) -> None:
        rows, fitted = evaluate(X[: self.n_train], feature, self.design)
        tests = {n: X[sp] for n, sp in self.spans.items()}
        apply(fitted, rows, tests, self.test_y, self.test_lengths)
        for row in rows:
            row.update(where)
            if self.keep_fitted and where.get("source"):
                key = (where["source"], where["layer"], row["feature"], row["classifier"])
                self.report.fitted[key] = fitted[row["classifier"]]
        (self.report.rows if where.get("source") else self.report.baseline).extend(rows)


def detect_model(
    lm: LoadedModel,
    train_sets: list[PromptSet],
    test_sets: list[PromptSet] = (),
    options: DetectOptions = DetectOptions(),
    labels: dict[str, str] | None = None,
    on_note: Callable[[str], None] | None = None,
    progress_start: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> ModelReport:
    """Capture features layer group by layer group, evaluate every detector, refit, score tests."""
    started = time.perf_counter()
    notes: list[str] = []
    train_labels, test_labels = _split_sets(train_sets, test_sets, labels or {})
    p, data = training_prompts(lm, train_sets, test_sets, train_labels, options)
    add_tests(lm, p, test_sets, test_labels, options, data)
    chosen = [p.texts[i] for i in p.keep]
    spans, start = {}, len(chosen)
    for name, fresh in p.test_texts.items():
        chosen += fresh
        spans[name] = slice(start, start + len(fresh))
        start += len(fresh)
    enc = F.tokenize(lm, chosen, options.max_tokens, options.chat_template)
    design = _design(lm, p, options, notes, data)
    passes, plan = _plan(lm, options, notes, len(chosen), len(p.keep), on_note)
    projection = (
        F.projection(plan["hidden"], options.project_dim, options.seed)
        if "cp" in options.kinds
        else None
    )
    report = ModelReport(
        lm.name, lm.label, lm.spec, lm.random_init, [], [], plan, data, notes, projection=projection
    )
    test_lengths = {name: enc.full_lengths[sp] for name, sp in spans.items()}
    score = _Scorer(report, design, len(p.keep), spans, p.test_y, test_lengths, options.keep_fitted)
    for name, X in baseline_features(chosen, enc.full_lengths).items():
        score(X, (name, name, None), {"model": lm.name})
    for i, group in enumerate(passes):
        tick = (
            progress_start(f"{lm.name} features {i + 1}/{len(passes)}", len(chosen))
            if progress_start
            else None
        )
        captured = F.capture(
            lm,
            enc,
            group,
            options.kinds,
            options.cp_positions,
            projection,
            options.batch_size,
            progress=tick,
        )
        for (source, layer), feats in captured.items():
            where = {"model": lm.name, "source": source, "layer": layer}
            for feature in options.features():
                score(feats[feature[1]], feature, where)
        del captured
    report.seconds = time.perf_counter() - started
    return report
