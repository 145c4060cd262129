"""Evaluation protocols for one feature set: grouped cross-validation and source-held-out.

Every number is taken at one stated operating point: the threshold at which a target share
of *held-out* benign prompts is flagged (``threshold_at_fpr``). Folds are stratified and
grouped by near-duplicate cluster (``StratifiedGroupKFold``), so a prompt and its near-copies
are never on both sides. In the source-held-out protocol each source is left out in turn:
the feature transform (CP), scaler, classifier, threshold (from grouped out-of-fold scores of
the remaining sources) and calibration are fitted without it, and it is scored once; prompts
of the other sources that are near-duplicates of a held-out prompt leave training first
(families overlap: a held-out family's near-copies in another family must not train).

The held-out sources (or, under plain cross-validation, grouped outer folds) are the outer
splits of nested selection: each records every candidate's inner selection score on the rest,
so that ``nested`` can re-run the ranking without the split and score its winner on it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from jbtrace import proportion
from jbtrace.detect import metrics
from jbtrace.detect.decompose import CPFeatures
from jbtrace.detect.direction import DiffMeans
from jbtrace.errors import UserError

CLASSIFIERS = ("logreg", "linsvm", "rbfsvm", "forest", "diffmean")
FPR_POINTS = (0.01, 0.05)  # TPR is always reported at these false-positive rates too
LENGTH_EDGES = (
    0,
    64,
    128,
    256,
    512,
)  # token-count bins of the FPR-by-length tables (last bin open)
METHOD = "clopper-pearson"  # the interval of every rate
INTERVAL = "Clopper-Pearson exact 95%"


def make_classifier(name: str, seed: int) -> Pipeline:
    """A standardised classifier with a fixed seed; ``diffmean`` is the projection onto the
    difference of class means (raw features), then a one-dimensional logistic regression."""
    if name == "diffmean":
        return make_pipeline(
            DiffMeans(), StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed)
        )
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
    """Continuous jailbreak score: the margin (decision function), or a forest's vote share."""
    return pipe.predict_proba(Z)[:, 1] if name == "forest" else pipe.decision_function(Z)


def threshold_at_fpr(benign_scores: np.ndarray, target: float) -> float:
    """The lowest threshold (flag when score ≥ t) that flags at most ``target`` of these benign
    scores."""
    s = np.sort(np.asarray(benign_scores, float))[::-1]
    allowed = int(np.floor(target * len(s) + 1e-9))
    return float(np.nextafter(s[allowed], np.inf)) if allowed < len(s) else float(s[-1])


def youden_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (flag when score ≥ t) that maximises TPR − FPR: for a score that separates
    two known kinds."""
    fpr, tpr, thresholds = roc_curve(y, scores)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def platt(y: np.ndarray, scores: np.ndarray, seed: int) -> tuple[float, float]:
    """Sigmoid calibration (a, b): probability = sigmoid(a·score + b), fitted on held-out scores."""
    lr = LogisticRegression(C=1e4, max_iter=5000, random_state=seed).fit(scores[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def calibrated(scale: tuple[float, float], scores: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(scale[0] * scores + scale[1])


def rate(flags: np.ndarray) -> dict:
    """Share flagged with its Clopper–Pearson 95% interval (``INTERVAL``)."""
    return proportion.rate(flags, METHOD)


def by_length(flags: np.ndarray, lengths: np.ndarray) -> list[dict]:
    """Share flagged per token-length bin (for benign prompts: the FPR by length)."""
    out = []
    for lo, hi in zip(LENGTH_EDGES, (*LENGTH_EDGES[1:], None), strict=True):
        inside = (lengths >= lo) & ((lengths < hi) if hi else True)
        if inside.any():
            out.append({"tokens": f"{lo}-{hi - 1}" if hi else f"{lo}+", **rate(flags[inside])})
    return out


@dataclass
class Design:
    """What the protocols need besides the features: labels, clusters, sources, lengths and
    settings."""

    y: np.ndarray
    clusters: np.ndarray | None = (
        None  # near-duplicate cluster per prompt (None: every prompt its own)
    )
    sources: np.ndarray | None = (
        None  # source per prompt; given, each source is also held out in turn
    )
    lengths: np.ndarray | None = None  # full token counts (FPR by length)
    classifiers: tuple[str, ...] = ("logreg",)
    folds: int = 5
    seed: int = 0
    target_fpr: float = 0.01
    cp_kwargs: dict = field(default_factory=dict)

    def splits(self, idx: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified folds over ``idx``, grouped by near-duplicate cluster."""
        groups = self.clusters[idx] if self.clusters is not None else idx
        cv = StratifiedGroupKFold(self.folds, shuffle=True, random_state=self.seed)
        return [(idx[a], idx[b]) for a, b in cv.split(np.zeros(len(idx)), self.y[idx], groups)]

    def held_out_sources(self) -> tuple[list[str], list[str]]:
        """Sources that can be left out (their class keeps another source) and those that cannot."""
        names = list(dict.fromkeys(self.sources))
        label = {s: int(self.y[self.sources == s][0]) for s in names}
        ok = [s for s in names if sum(label[t] == label[s] for t in names) > 1]
        return ok, [s for s in names if s not in ok]


@dataclass
class Fitted:
    """One detector: feature transform, classifier, threshold at the target FPR, calibration."""

    feature: str
    kind: str
    rank: int | None
    classifier: str
    cp: CPFeatures | None
    pipeline: Pipeline
    threshold: float
    platt: tuple[float, float] | None = (
        None  # (a, b) on the native score, fitted on held-out scores
    )

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X if self.cp is None else self.cp.transform(X)

    def score(self, X: np.ndarray) -> np.ndarray:
        return native_score(self.pipeline, self.classifier, self.transform(X))


def _fit(X, feature, d: Design, train: np.ndarray) -> tuple[CPFeatures | None, dict, int]:
    """CP (for cp features) and every classifier fitted on ``train`` only; count of unconverged
    fits."""
    label, kind, rank = feature
    cp, Z = None, X[train]
    if kind == "cp":
        cp = CPFeatures(rank=rank, random_state=d.seed, **d.cp_kwargs)
        Z = cp.fit_transform(X[train])
    pipes, warned = {}, 0
    for c in d.classifiers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            pipes[c] = make_classifier(c, d.seed).fit(Z, d.y[train])
        warned += any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return cp, pipes, warned


def _score(X, cp, pipes: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
    Z = X[idx] if cp is None else cp.transform(X[idx])
    return {c: native_score(p, c, Z) for c, p in pipes.items()}


def _out_of_fold(X, feature, d: Design, idx: np.ndarray) -> tuple[dict, list, int]:
    """Out-of-fold scores of ``idx`` (aligned with it) from grouped folds fitted inside ``idx``."""
    oof = {c: np.zeros(len(X)) for c in d.classifiers}
    folds, warned = [], 0
    for train, test in d.splits(idx):
        cp, pipes, w = _fit(X, feature, d, train)
        warned += w
        for c, s in _score(X, cp, pipes, test).items():
            oof[c][test] = s
        folds.append(test)
    return {c: s[idx] for c, s in oof.items()}, folds, warned


def _at_points(benign_scores: np.ndarray, target: float) -> dict[str, float]:
    points = dict.fromkeys(sorted({target, *FPR_POINTS}))
    return {f"{p:g}": threshold_at_fpr(benign_scores, p) for p in points}


def _cv_metrics(
    d: Design, oof: np.ndarray, folds: list, threshold: float, thresholds: dict
) -> dict:
    """CV metrics at the operating threshold (mean ± std over folds), pooled rates and TPR at
    fixed FPRs."""
    y, flags = d.y, oof >= threshold
    per = {"f1": [], "accuracy": [], "auroc": []}
    for test in folds:
        per["f1"].append(f1_score(y[test], flags[test], zero_division=0))
        per["accuracy"].append(accuracy_score(y[test], flags[test]))
        per["auroc"].append(roc_auc_score(y[test], oof[test]) if len(set(y[test])) == 2 else np.nan)
    out = {}
    for m, values in per.items():
        out[m], out[f"{m}_std"] = float(np.nanmean(values)), float(np.nanstd(values, ddof=1))
    out["oof_auroc"] = float(roc_auc_score(y, oof))
    groups = d.clusters if d.clusters is not None else np.arange(len(y))
    out["auroc_interval"] = metrics.auroc_interval(y, oof, groups, d.seed)
    out["fpr_at_tpr"] = {"0.95": metrics.fpr_at_tpr(y, oof, 0.95)}
    out["calibration"] = metrics.calibration(y, oof, folds, d.seed)
    out["tpr"], out["fpr"] = rate(flags[y == 1]), rate(flags[y == 0])
    out["tpr_at_fpr"] = {
        p: {**rate(oof[y == 1] >= t), "fpr": rate(oof[y == 0] >= t)["rate"]}
        for p, t in thresholds.items()
    }
    if d.lengths is not None:
        out["fpr_by_length"] = by_length(flags[y == 0], d.lengths[y == 0])
    return out


def outer_splits(d: Design) -> list[tuple[str, np.ndarray]]:
    """The outer splits around the inner selection: under cross-source each source that can be
    held out, and a source alone in its class in grouped folds of its own (``SOURCE#foldK``), so
    both classes are scored; else grouped folds over every prompt."""
    if d.sources is None:
        idx = np.arange(len(d.y))
        return [(f"fold{i + 1}", test) for i, (_, test) in enumerate(d.splits(idx))]
    ok, alone = d.held_out_sources()
    out = [(s, np.flatnonzero(d.sources == s)) for s in ok]
    for s in alone:
        idx = np.flatnonzero(d.sources == s)
        groups = d.clusters[idx] if d.clusters is not None else idx
        k = min(d.folds, len(np.unique(groups)))
        cv = GroupKFold(k, shuffle=True, random_state=d.seed)
        out += [
            (f"{s}#fold{i + 1}", idx[b]) for i, (_, b) in enumerate(cv.split(idx, groups=groups))
        ]
    return out


def _outer_entry(d: Design, oof: np.ndarray, train, test, s: np.ndarray, removed: int) -> dict:
    """One classifier on one outer split: the inner selection score on the rest, and the split's
    rates at the threshold set on the rest's out-of-fold benign scores."""
    points = _at_points(oof[d.y[train] == 0], d.target_fpr)
    threshold = points[f"{d.target_fpr:g}"]
    inner_jb = oof[d.y[train] == 1]
    entry = {
        "inner_selection": rate(inner_jb >= threshold)["rate"],
        "inner_auroc": float(roc_auc_score(d.y[train], oof)),
        "near_copies_out_of_training": removed,
        "threshold": threshold,
    }
    for name, c in (("benign", 0), ("jailbreak", 1)):
        mine = d.y[test] == c
        if mine.any():
            entry[name] = {
                **rate(s[mine] >= threshold),
                "at_fpr": {p: rate(s[mine] >= t) for p, t in points.items()},
            }
            if not c and d.lengths is not None:
                flags = s[mine] >= threshold
                entry[name]["fpr_by_length"] = by_length(flags, d.lengths[test][mine])
    return entry


def _outer(X, feature, d: Design) -> tuple[dict, dict, int]:
    """Per classifier, per outer split: fitted, thresholded and ranked without it, scored on it
    (the entries, and the split's scores).

    Prompts of the rest that are near-duplicates of a prompt of the split leave training first,
    so the split is scored whole."""
    out, scores, warned = {c: {} for c in d.classifiers}, {c: {} for c in d.classifiers}, 0
    for split, test in outer_splits(d):
        train = np.setdiff1d(np.arange(len(d.y)), test)
        removed = 0
        if d.clusters is not None:
            copies = np.isin(d.clusters[train], d.clusters[test])
            removed, train = int(copies.sum()), train[~copies]
        oof, _, w1 = _out_of_fold(X, feature, d, train)
        cp, pipes, w2 = _fit(X, feature, d, train)
        warned += w1 + w2
        empty = {c: np.array([]) for c in d.classifiers}
        test_scores = _score(X, cp, pipes, test) if len(test) else empty
        for c in d.classifiers:
            out[c][split] = _outer_entry(d, oof[c], train, test, test_scores[c], removed)
            scores[c][split] = test_scores[c]
    return out, scores, warned


def _held_out_view(entries: dict) -> dict:
    """A held-out source's entry as the held-out tables read it: its one class's rate on top
    (its ``benign`` / ``jailbreak`` entry kept)."""
    out = {}
    for source, e in entries.items():
        label = "jailbreak" if "jailbreak" in e else "benign"
        side = e.get(label, {**rate(np.array([], bool)), "at_fpr": {}})
        out[source] = {
            "label": label,
            "metric": "TPR" if label == "jailbreak" else "FPR",
            **e,  # the class-keyed entry too: nested selection reads it
            **side,
        }
    return out


def worst(held_out: dict) -> dict | None:
    """The held-out source with the lowest share of correct decisions (TPR, or 1 − FPR)."""
    scored = [
        (e["rate"] if e["label"] == "jailbreak" else 1 - e["rate"], s, e)
        for s, e in held_out.items()
        if e["rate"] is not None
    ]
    if not scored:
        return None
    correct, source, e = min(scored, key=lambda t: t[0])
    return {"source": source, "metric": e["metric"], "rate": e["rate"], "correct": correct}


def evaluate(
    X: np.ndarray, feature: tuple[str, str, int | None], d: Design
) -> tuple[list[dict], dict[str, Fitted]]:
    """Grouped CV (and, with sources, source-held-out) for every classifier on one feature set.

    X is (prompts, positions, hidden) for ``cp`` (decomposed inside each training fold) and
    (prompts, features) otherwise. Returns one row per classifier and the detectors refitted on
    all prompts, each with the threshold at ``target_fpr`` on the out-of-fold benign scores and
    a sigmoid calibration fitted on the out-of-fold scores.
    """
    label, kind, rank = feature
    idx = np.arange(len(d.y))
    oof, folds, warned = _out_of_fold(X, feature, d, idx)
    cp, pipes, w = _fit(X, feature, d, idx)
    outer, _, w2 = _outer(X, feature, d)
    warned += w + w2
    rows, fitted = [], {}
    for c in d.classifiers:
        thresholds = _at_points(oof[c][d.y == 0], d.target_fpr)
        threshold = thresholds[f"{d.target_fpr:g}"]
        scale = platt(d.y, oof[c], d.seed)
        fitted[c] = Fitted(label, kind, rank, c, cp, pipes[c], threshold, scale)
        held = _held_out_view(outer[c]) if d.sources is not None else {}
        row = {
            "feature": label,
            "kind": kind,
            "rank": rank,
            "classifier": c,
            "threshold": threshold,
            **_cv_metrics(d, oof[c], folds, threshold, thresholds),
            "held_out": held,
            "worst_held_out": worst(held),
            "outer_folds": outer[c] if d.sources is None else {},
            "unconverged_fits": warned,
        }
        # Brier score of probabilities calibrated on other folds than the ones scored
        row["brier"] = row["calibration"]["brier"]
        # the inner contest: out-of-fold TPR at the target FPR on every training prompt
        row["selection"] = row["tpr_at_fpr"][f"{d.target_fpr:g}"]["rate"]
        rows.append(row)
    return rows, fitted


def apply(
    fitted: dict[str, Fitted],
    rows: list[dict],
    X_sets: dict[str, np.ndarray],
    y_sets: dict[str, int],
    lengths: dict[str, np.ndarray],
) -> None:
    """Add to each row the flagged share of each test set at the detector's threshold (TPR or
    FPR, with CI)."""
    for row in rows:
        detector = fitted[row["classifier"]]
        row["tests"] = {}
        for name, X in X_sets.items():
            flags = detector.score(X) >= detector.threshold
            entry = {
                "label": "jailbreak" if y_sets[name] else "benign",
                "metric": "TPR" if y_sets[name] else "FPR",
                **rate(flags),
            }
            if not y_sets[name]:
                entry["fpr_by_length"] = by_length(flags, lengths[name])
            row["tests"][name] = entry
