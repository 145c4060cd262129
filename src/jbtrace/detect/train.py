"""Per-layer jailbreak detectors: CP factors and pooled states, evaluated so they cannot flatter.

For each (source, layer) of a model, features are captured (see ``features``), then every
feature (``cp-rR``, ``last``, ``mean``) × classifier pair is evaluated by ``evaluate``:
stratified folds grouped by near-duplicate cluster, and with ``protocol="cross-source"`` each
prompt source left out in turn. A length-only baseline (log token count) goes through the
same protocol. All rates are at one operating point: the threshold that flags ``target_fpr``
of the out-of-fold benign prompts. Test sets lose every prompt that is a near-duplicate of a
training prompt before they are scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import ks_2samp
from sklearn.model_selection import StratifiedGroupKFold

from jbtrace.detect import features as F
from jbtrace.detect.evaluate import CLASSIFIERS, Design, apply, evaluate
from jbtrace.detect.holdout import test_set_prompts
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel
from jbtrace.models.tokens import MAX_TOKENS
from jbtrace.prompts import PromptSet, matching, neardup

log = logging.getLogger(__name__)

PROTOCOLS = ("cv", "cross-source")
LABELS = {"benign": 0, "jailbreak": 1}
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
    protocol: str = "cv"
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


# ---------------------------------------------------------------- labels and prompt selection


def resolve_labels(names: list[str], explicit: dict[str, str], training: bool) -> dict[str, int]:
    """0 (benign) or 1 (jailbreak) per set: --label, else the name's prefix, else (two) order."""
    bad = [v for v in explicit.values() if v not in LABELS]
    if bad:
        raise UserError(f"--label value {bad[0]!r}: use NAME=benign or NAME=jailbreak")
    out = {}
    for name in names:
        lowered = name.lower()
        if name in explicit:
            out[name] = LABELS[explicit[name]]
        elif lowered.startswith(("benign", "harmless")):
            out[name] = 0
        elif lowered.startswith(("jailbreak", "jb", "attack")):
            out[name] = 1
    missing = [n for n in names if n not in out]
    if missing and training and len(names) == 2 and not out:
        return {names[0]: 0, names[1]: 1}
    if missing:
        raise UserError(
            f"cannot tell whether prompt set {missing[0]!r} is benign or jailbreak: "
            f"name it benign*/jailbreak* or pass --label {missing[0]}=benign|jailbreak"
        )
    if training and set(out.values()) != {0, 1}:
        raise UserError("training needs at least one benign and one jailbreak prompt set")
    return out


def length_summary(lengths: np.ndarray, y: np.ndarray) -> dict:
    """Median and quartiles of token counts per class, and a two-sample KS test between them."""
    out = {
        name: {
            "n": int((y == c).sum()),
            "median": float(np.median(lengths[y == c])),
            "q25": float(np.percentile(lengths[y == c], 25)),
            "q75": float(np.percentile(lengths[y == c], 75)),
        }
        for name, c in LABELS.items()
    }
    ks = ks_2samp(lengths[y == 0], lengths[y == 1])
    out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    return out


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


def prompt_sources(sets: list[PromptSet]) -> np.ndarray:
    """Source of each prompt: the set's name, or NAME/GROUP for a set whose prompts carry groups."""
    return np.array(
        [f"{s.name}/{g}" if s.groups else s.name for s in sets for g in s.group_labels()]
    )


def _check_counts(y: np.ndarray, folds: int, what: str) -> None:
    least = min(int((y == 0).sum()), int((y == 1).sum()))
    if least < folds:
        raise UserError(f"{what}: {least} prompts in the smaller class, fewer than --folds {folds}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _near_duplicate_summary(clusters: np.ndarray, threshold: float) -> dict:
    sizes = np.bincount(np.unique(clusters, return_inverse=True)[1])
    return {
        "threshold": threshold,
        "ngram": neardup.NGRAM,
        "clusters": int(len(sizes)),
        "prompts_in_shared_clusters": int(sizes[sizes > 1].sum()),
    }


@dataclass
class _Prompts:
    """The loaded training prompts, which of them train, and the test prompts to score."""

    texts: list[str]  # every training prompt loaded
    y: np.ndarray  # label per loaded prompt
    sources: np.ndarray  # source per loaded prompt
    full: np.ndarray  # full token count per loaded prompt
    clusters: np.ndarray  # near-duplicate cluster per loaded prompt
    test_clusters: np.ndarray  # near-duplicate cluster per test-set prompt (same numbering)
    keep: np.ndarray  # the loaded prompts that train (after length matching and --test-split)
    test_texts: dict[str, list[str]] = field(default_factory=dict)
    test_y: dict[str, int] = field(default_factory=dict)


def _training_prompts(lm, train_sets, test_sets, train_labels, options) -> tuple[_Prompts, dict]:
    """Labels, lengths, near-duplicate clusters and length matching of the training prompts."""
    texts = [t for s in train_sets for t in s.texts]
    y_all = np.concatenate([np.full(len(s), train_labels[s.name]) for s in train_sets])
    sources = prompt_sources(train_sets)
    full = F.tokenize(lm, texts, options.max_tokens, options.chat_template).full_lengths
    # one clustering over training and test prompts: equal ids mean near-duplicates across sets
    clusters = neardup.clusters(
        texts + [t for s in test_sets for t in s.texts], options.near_duplicate
    )
    train_clusters = clusters[: len(texts)]
    keep = (
        matching.match_lengths(full, y_all == 1, options.seed)
        if options.match_length
        else np.arange(len(texts))
    )
    _check_counts(
        y_all[keep],
        options.folds,
        "length-matched training set" if options.match_length else "training set",
    )
    data = {
        "train_sets": {
            s.name: {
                "label": "jailbreak" if train_labels[s.name] else "benign",
                "n": len(s),
                "source": s.source,
                "sources": sorted(set(prompt_sources([s]))),
            }
            for s in train_sets
        },
        "length_matching": matching.PROCEDURE if options.match_length else None,
        "near_duplicates": _near_duplicate_summary(train_clusters[keep], options.near_duplicate),
        "lengths_loaded": length_summary(full, y_all),
        "lengths_used": length_summary(full[keep], y_all[keep]),
    }
    prompts = _Prompts(texts, y_all, sources, full, train_clusters, clusters[len(texts) :], keep)
    return prompts, data


def _add_tests(lm, p: _Prompts, test_sets, test_labels, options, data: dict) -> None:
    """The --test-split hold-out (taken from ``p.keep``) and the test sets, into ``p``."""
    if options.test_split:
        cv = StratifiedGroupKFold(
            max(2, round(1 / options.test_split)), shuffle=True, random_state=options.seed
        )
        part, hold = next(cv.split(p.keep, p.y[p.keep], p.clusters[p.keep]))
        p.keep, hold = p.keep[part], p.keep[hold]
        _check_counts(p.y[p.keep], options.folds, "training set after --test-split")
        for name, c in LABELS.items():
            p.test_texts[f"split_{name}"] = [p.texts[i] for i in hold if p.y[i] == c]
            p.test_y[f"split_{name}"] = c
    offset = 0
    for s in test_sets:
        fresh, info = test_set_prompts(
            lm, s, p.test_clusters[offset : offset + len(s)], set(p.texts), p.clusters, options
        )
        offset += len(s)
        data.setdefault("test_sets", {})[s.name] = {
            "label": "jailbreak" if test_labels[s.name] else "benign",
            **info,
        }
        p.test_texts[s.name], p.test_y[s.name] = fresh, test_labels[s.name]


def _design(lm, p: _Prompts, options, notes: list[str], data: dict) -> Design:
    """The evaluation design of the training prompts (sources held out under cross-source)."""
    design = Design(
        y=p.y[p.keep],
        clusters=p.clusters[p.keep],
        lengths=p.full[p.keep],
        sources=p.sources[p.keep] if options.protocol == "cross-source" else None,
        classifiers=options.classifiers,
        folds=options.folds,
        seed=options.seed,
        target_fpr=options.target_fpr,
        cp_kwargs={"n_iter_max": options.cp_iters, "device": str(lm.device)},
    )
    if design.sources is not None:
        ok, alone = design.held_out_sources()
        if not ok:
            raise UserError(
                "--protocol cross-source needs two sources of one class (two benign or two "
                "jailbreak --prompts sets, or a set whose prompts carry sources)"
            )
        notes += [f"source {s} is the only one of its class, so it is not held out" for s in alone]
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
    p, data = _training_prompts(lm, train_sets, test_sets, train_labels, options)
    _add_tests(lm, p, test_sets, test_labels, options, data)
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
    score(
        np.log(enc.full_lengths.astype(float))[:, None],
        ("length", "length", None),
        {"model": lm.name},
    )
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
