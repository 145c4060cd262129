"""Per-layer jailbreak detectors: cross-validated classifiers on CP factors and pooled states.

For each (source, layer) of a model, features are captured (see ``features``), then every
feature (``cp-rR``, ``last``, ``mean``) × classifier pair is scored by stratified k-fold
cross-validation. CP is fitted on the training folds only and held-out prompts are projected
onto its factors, so no held-out prompt touches the decomposition. A length-only baseline
(log token count) is scored the same way. The final detectors are refitted on all training
prompts; their threshold is the one that maximises TPR − FPR on the out-of-fold scores, and
it is what other prompt sets (``test_sets``) are flagged with.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.stats import ks_2samp
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from jbtrace.detect import features as F
from jbtrace.detect.decompose import CPFeatures
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel
from jbtrace.prompts import PromptSet

log = logging.getLogger(__name__)

CLASSIFIERS = ("logreg", "linsvm", "rbfsvm", "forest")
PROTOCOLS = ("cv", "cross-source")
LABELS = {"benign": 0, "jailbreak": 1}


def make_classifier(name: str, seed: int) -> Pipeline:
    """A standardised classifier with a fixed seed."""
    clf = {
        "logreg": lambda: LogisticRegression(max_iter=5000, random_state=seed),
        "linsvm": lambda: LinearSVC(max_iter=20000, random_state=seed),
        "rbfsvm": lambda: SVC(kernel="rbf", gamma="scale", random_state=seed),
        "forest": lambda: RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
    }
    if name not in clf:
        raise UserError(f"unknown classifier {name!r}: choose from {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), clf[name]())


def native_score(pipe: Pipeline, name: str, Z: np.ndarray) -> np.ndarray:
    """Continuous jailbreak score: probability for logreg / forest, margin for the SVMs."""
    return pipe.predict_proba(Z)[:, 1] if name in ("logreg", "forest") else pipe.decision_function(Z)


@dataclass(frozen=True)
class DetectOptions:
    sources: tuple[str, ...] = ("resid",)
    layers: tuple[int, ...] | None = None  # None: all
    kinds: tuple[str, ...] = ("cp", "last", "mean")
    ranks: tuple[int, ...] = (4, 8, 16)
    classifiers: tuple[str, ...] = CLASSIFIERS
    folds: int = 5
    test_split: float = 0.0  # fraction of training prompts held out (stratified), scored once at the end
    protocol: str = "cv"
    match_length: bool = False
    test_min_tokens: int = 0
    test_limit: int | None = None  # seeded sample of each test set, taken after the filters above
    cp_positions: int = 64
    project_dim: int | None = None
    cp_iters: int = 100
    max_tokens: int = 512
    chat_template: bool | None = None  # None: where the tokenizer has one; the prompt as the model sees it before answering
    batch_size: int = 8
    memory_budget: int = 2 * 2**30
    seed: int = 0
    keep_fitted: bool = False  # keep the refitted detectors (for saving)

    def __post_init__(self):
        for name, known in (("sources", F.SOURCES), ("kinds", F.KINDS), ("classifiers", CLASSIFIERS)):
            values = getattr(self, name)
            if not values:
                raise UserError(f"give at least one of --{name[:-1]}")
            bad = [v for v in values if v not in known]
            if bad:
                raise UserError(f"unknown {name[:-1]} {bad[0]!r}: choose from {', '.join(known)}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        if self.folds < 2:
            raise UserError("--folds must be at least 2")
        if not 0 <= self.test_split < 1:
            raise UserError("--test-split must be a fraction in [0, 1)")
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
    """0 (benign) or 1 (jailbreak) per set: --label, else the name's prefix, else (two training sets) order."""
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
        raise UserError(f"cannot tell whether prompt set {missing[0]!r} is benign or jailbreak: "
                        f"name it benign*/jailbreak* or pass --label {missing[0]}=benign|jailbreak")
    if training and set(out.values()) != {0, 1}:
        raise UserError("training needs at least one benign and one jailbreak prompt set")
    return out


def match_lengths(lengths: np.ndarray, y: np.ndarray, seed: int, bins: int = 20) -> np.ndarray:
    """Indices of a subsample whose log token-length histograms are equal for both classes."""
    logs = np.log(lengths)
    edges = np.histogram_bin_edges(logs, bins)
    which = np.clip(np.digitize(logs, edges[1:-1]), 0, bins - 1)
    rng = np.random.default_rng(seed)
    keep = []
    for b in range(bins):
        groups = [np.flatnonzero((which == b) & (y == c)) for c in (0, 1)]
        k = min(len(g) for g in groups)
        keep += [rng.choice(g, k, replace=False) for g in groups if k]
    return np.sort(np.concatenate(keep)) if keep else np.array([], dtype=int)


def length_summary(lengths: np.ndarray, y: np.ndarray) -> dict:
    """Median and quartiles of token counts per class, and a two-sample KS test between them."""
    out = {name: {"n": int((y == c).sum()), "median": float(np.median(lengths[y == c])),
                  "q25": float(np.percentile(lengths[y == c], 25)), "q75": float(np.percentile(lengths[y == c], 75))}
           for name, c in LABELS.items()}
    ks = ks_2samp(lengths[y == 0], lengths[y == 1])
    out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    return out


# ---------------------------------------------------------------- evaluation of one feature set


@dataclass
class Fitted:
    """One detector refitted on all training prompts: feature transform, classifier, threshold."""

    feature: str
    kind: str
    rank: int | None
    classifier: str
    cp: CPFeatures | None
    pipeline: Pipeline
    threshold: float
    platt: tuple[float, float] | None  # (a, b): probability = sigmoid(a·margin + b), for the SVMs

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X if self.cp is None else self.cp.transform(X)

    def score(self, X: np.ndarray) -> np.ndarray:
        return native_score(self.pipeline, self.classifier, self.transform(X))


def youden_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (flag when score ≥ t) that maximises TPR − FPR."""
    fpr, tpr, thresholds = roc_curve(y, scores)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def platt(y: np.ndarray, scores: np.ndarray, seed: int) -> tuple[float, float]:
    """Sigmoid calibration of margins (fitted on out-of-fold margins)."""
    lr = LogisticRegression(C=1e4, max_iter=5000, random_state=seed).fit(scores[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _fit(name: str, seed: int, Z: np.ndarray, y: np.ndarray) -> tuple[Pipeline, bool]:
    """Fit a fresh classifier; also say whether the solver warned that it did not converge."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipe = make_classifier(name, seed).fit(Z, y)
    return pipe, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _metrics(y, pred, scores) -> dict:
    return {"f1": f1_score(y, pred, zero_division=0), "accuracy": accuracy_score(y, pred),
            "auroc": roc_auc_score(y, scores)}


def evaluate(
    X: np.ndarray,
    y: np.ndarray,
    feature: tuple[str, str, int | None],
    classifiers: tuple[str, ...],
    folds: int,
    seed: int,
    cp_kwargs: dict | None = None,
) -> tuple[list[dict], dict[str, Fitted]]:
    """Cross-validate every classifier on one feature set; refit each on all prompts.

    X is (prompts, positions, hidden) for ``cp`` (decomposed inside each training fold) and
    (prompts, features) otherwise. Returns one metrics dict per classifier and the refits.
    """
    label, kind, rank = feature
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)

    def transform(train, test):
        if kind != "cp":
            return None, X[train], None if test is None else X[test]
        cp = CPFeatures(rank=rank, random_state=seed, **(cp_kwargs or {}))
        return cp, cp.fit_transform(X[train]), None if test is None else cp.transform(X[test])

    fold_metrics = {c: [] for c in classifiers}
    oof = {c: np.zeros(len(y)) for c in classifiers}
    unconverged = {c: 0 for c in classifiers}
    for train, test in cv.split(np.zeros(len(y)), y):
        _, z_train, z_test = transform(train, test)
        for c in classifiers:
            pipe, warned = _fit(c, seed, z_train, y[train])
            unconverged[c] += warned
            oof[c][test] = native_score(pipe, c, z_test)
            fold_metrics[c].append(_metrics(y[test], pipe.predict(z_test), oof[c][test]))
    cp, z_all, _ = transform(np.arange(len(y)), None)
    rows, fitted = [], {}
    for c in classifiers:
        pipe, warned = _fit(c, seed, z_all, y)
        threshold = youden_threshold(y, oof[c])
        scale = platt(y, oof[c], seed) if c in ("linsvm", "rbfsvm") else None
        fitted[c] = Fitted(label, kind, rank, c, cp, pipe, threshold, scale)
        row = {"feature": label, "kind": kind, "rank": rank, "classifier": c, "threshold": threshold}
        for m in ("f1", "accuracy", "auroc"):
            values = np.array([f[m] for f in fold_metrics[c]])
            row[m], row[f"{m}_std"] = float(values.mean()), float(values.std(ddof=1))
        row["oof_auroc"] = float(roc_auc_score(y, oof[c]))
        row["unconverged_fits"] = unconverged[c] + warned
        rows.append(row)
    return rows, fitted


def apply(fitted: dict[str, Fitted], rows: list[dict], X_sets: dict[str, np.ndarray], y_sets: dict[str, int],
          holdout: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Add to each row the flagged fraction of each test set (TPR or FPR) and held-out metrics."""
    for row in rows:
        detector = fitted[row["classifier"]]
        row["tests"] = {}
        for name, X in X_sets.items():
            flagged = float(np.mean(detector.score(X) >= detector.threshold))
            row["tests"][name] = {"label": "jailbreak" if y_sets[name] else "benign",
                                  "metric": "TPR" if y_sets[name] else "FPR", "rate": flagged, "n": len(X)}
        if holdout is not None:
            X, y = holdout
            z = detector.transform(X)
            scores = native_score(detector.pipeline, detector.classifier, z)
            row["holdout"] = {k: float(v) for k, v in _metrics(y, detector.pipeline.predict(z), scores).items()}
            flags = scores >= detector.threshold
            row["holdout"].update(tpr=float(flags[y == 1].mean()), fpr=float(flags[y == 0].mean()), n=len(y))


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
    fitted: dict = field(default_factory=dict)  # (source, layer, feature, classifier) -> Fitted
    projection: np.ndarray | None = None
    seconds: float = 0.0


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,5"``, ``"0:7"`` (end exclusive) or both mixed → sorted layer indices; None/empty → all."""
    if not text:
        return None
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


def _requests(lm: LoadedModel, options: DetectOptions, notes: list[str]) -> list[tuple[str, int]]:
    requests = []
    for source in options.sources:
        pts = F.points(lm, source)
        wanted = options.layers if options.layers is not None else range(len(pts))
        missing = [layer for layer in wanted if layer >= len(pts) or pts[layer] is None]
        if missing:
            notes.append(f"{lm.name}: no {source} at layer {', '.join(map(str, missing))} (skipped)")
        requests += [(source, layer) for layer in wanted if layer not in missing]
    if not requests:
        raise UserError(f"{lm.name}: none of the asked layers exist (it has layers 0..{lm.n_layers - 1})")
    return requests


def _split_sets(train_sets, test_sets, labels, protocol):
    """Labels of every set; cross-source moves all jailbreak sets but the first to the test side."""
    train_labels = resolve_labels([s.name for s in train_sets], labels, training=True)
    test_labels = resolve_labels([s.name for s in test_sets], labels, training=False)
    if protocol == "cross-source":
        moved = [s for s in train_sets if train_labels[s.name] == 1][1:]
        if not moved:
            raise UserError("--protocol cross-source needs two jailbreak --prompts sets: "
                            "it trains on the first and tests on the others")
        train_sets = [s for s in train_sets if s.name not in {m.name for m in moved}]
        test_sets = moved + list(test_sets)
        test_labels.update({m.name: 1 for m in moved})
    clash = {s.name for s in train_sets} & {s.name for s in test_sets}
    if clash:
        raise UserError(f"prompt set name {sorted(clash)[0]!r} is used for training and testing")
    return train_sets, test_sets, train_labels, test_labels


def _check_counts(y: np.ndarray, folds: int, what: str) -> None:
    least = min(int((y == 0).sum()), int((y == 1).sum()))
    if least < folds:
        raise UserError(f"{what}: {least} prompts in the smaller class, fewer than --folds {folds}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def detect_model(
    lm: LoadedModel,
    train_sets: list[PromptSet],
    test_sets: list[PromptSet] = (),
    options: DetectOptions = DetectOptions(),
    labels: dict[str, str] | None = None,
    on_note: Callable[[str], None] | None = None,
    progress_start: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> ModelReport:
    """Capture features layer group by layer group, cross-validate, refit, score test sets."""
    import time

    started = time.perf_counter()
    notes: list[str] = []
    train_sets, test_sets, train_labels, test_labels = _split_sets(train_sets, test_sets, labels or {}, options.protocol)
    texts = [t for s in train_sets for t in s.texts]
    y_all = np.concatenate([np.full(len(s), train_labels[s.name]) for s in train_sets])
    full = F.tokenize(lm, texts, options.max_tokens, options.chat_template).full_lengths
    keep = match_lengths(full, y_all, options.seed) if options.match_length else np.arange(len(texts))
    _check_counts(y_all[keep], options.folds, "length-matched training set" if options.match_length else "training set")
    data = {"train_sets": {s.name: {"label": "jailbreak" if train_labels[s.name] else "benign", "n": len(s),
                                    "source": s.source} for s in train_sets},
            "lengths_loaded": length_summary(full, y_all), "lengths_used": length_summary(full[keep], y_all[keep])}
    hold = np.array([], dtype=int)
    if options.test_split:
        keep, hold = train_test_split(keep, test_size=options.test_split, stratify=y_all[keep], random_state=options.seed)
        keep, hold = np.sort(keep), np.sort(hold)
        _check_counts(y_all[keep], options.folds, "training set after --test-split")
    seen = set(texts)
    chosen = [texts[i] for i in np.concatenate([keep, hold])]
    spans, start = {}, len(chosen)
    for s in test_sets:
        fresh = [t for t in s.texts if t not in seen]
        lengths = (F.tokenize(lm, fresh, options.max_tokens, options.chat_template).full_lengths if fresh
                   else np.array([], dtype=int))
        fresh = [t for t, n in zip(fresh, lengths) if n >= options.test_min_tokens]
        if options.test_limit and len(fresh) > options.test_limit:
            pick = np.random.default_rng(options.seed).choice(len(fresh), options.test_limit, replace=False)
            fresh = [fresh[i] for i in np.sort(pick)]
        if not fresh:
            raise UserError(f"test set {s.name!r}: no prompts left after removing those in the training sets "
                            f"and those under --test-min-tokens {options.test_min_tokens}")
        data.setdefault("test_sets", {})[s.name] = {
            "label": "jailbreak" if test_labels[s.name] else "benign", "source": s.source, "loaded": len(s),
            "overlap_removed": len(s) - len([t for t in s.texts if t not in seen]), "n": len(fresh)}
        chosen += fresh
        spans[s.name] = slice(start, start + len(fresh))
        start += len(fresh)
    enc = F.tokenize(lm, chosen, options.max_tokens, options.chat_template)
    y, y_hold = y_all[keep], y_all[hold]
    dev, held = slice(0, len(keep)), slice(len(keep), len(keep) + len(hold))

    requests = _requests(lm, options, notes)
    hidden = F.hidden_size(lm)
    per_request = F.request_bytes(len(chosen), hidden, options.kinds, options.cp_positions, options.project_dim)
    passes = F.plan_passes(requests, per_request, options.memory_budget)
    cp_bytes = len(keep) * options.cp_positions * (options.project_dim or hidden) * F.BYTES if "cp" in options.kinds else 0
    plan = {"prompts": len(chosen), "layer_reads": len(requests), "hidden": hidden, "bytes_per_layer_read": per_request,
            "passes": len(passes), "feature_bytes_per_pass": max(len(p) for p in passes) * per_request,
            "cp_tensor_bytes": cp_bytes, "budget_bytes": options.memory_budget}
    message = (f"{lm.name}: {len(chosen)} prompts, {len(requests)} layer reads in {len(passes)} pass(es); "
               f"features {_gib(plan['feature_bytes_per_pass'])} per pass" +
               (f", CP tensor {_gib(cp_bytes)} per fit" if cp_bytes else ""))
    log.info(message)
    if on_note:
        on_note(message)

    projection = F.projection(hidden, options.project_dim, options.seed) if "cp" in options.kinds else None
    cp_kwargs = {"n_iter_max": options.cp_iters, "device": str(lm.device)}
    report = ModelReport(lm.name, lm.label, lm.spec, lm.random_init, [], [], plan, data, notes, projection=projection)
    y_tests = {name: test_labels[name] for name in spans}

    def evaluate_all(X: np.ndarray, feature, where: dict) -> None:
        rows, fitted = evaluate(X[dev], y, feature, options.classifiers, options.folds, options.seed, cp_kwargs)
        apply(fitted, rows, {n: X[sp] for n, sp in spans.items()}, y_tests, (X[held], y_hold) if len(hold) else None)
        for row in rows:
            row.update(where)
            if options.keep_fitted and where.get("source"):
                report.fitted[(where["source"], where["layer"], row["feature"], row["classifier"])] = fitted[row["classifier"]]
        (report.rows if where.get("source") else report.baseline).extend(rows)

    evaluate_all(np.log(enc.full_lengths.astype(float))[:, None], ("length", "length", None), {"model": lm.name})
    for i, group in enumerate(passes):
        tick = progress_start(f"{lm.name} features {i + 1}/{len(passes)}", len(chosen)) if progress_start else None
        captured = F.capture(lm, enc, group, options.kinds, options.cp_positions, projection, options.batch_size,
                             progress=tick)
        for (source, layer), feats in captured.items():
            for feature in options.features():
                evaluate_all(feats[feature[1]], feature, {"model": lm.name, "source": source, "layer": layer})
        del captured
    report.seconds = time.perf_counter() - started
    return report
