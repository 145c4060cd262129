"""Judges scored against people's labels: how far each verdict can be trusted.

Labelled data: pyrit's people-labelled scorer evaluations (read as files, never imported):
``refusal_scorer/refusal.csv`` and ``refusal_extra.csv`` (people's "refusal" covers any answer
that does not do what was asked, an unrelated answer included: so complied = not refusal) and
``objective/*.csv`` (395 answers in 14 harm categories; complied = "objective achieved"). Or a
user's JSON lines with ``prompt``, ``response``, ``label`` (refused / complied / other).

Complied is the positive class. Verdicts scored: ``refusal`` (complied = no refusal phrase),
``on-topic`` (complied = similarity to the request ≥ threshold) and ``complied`` (the one verdict
of ``defend.verdict`` without the coherent judge, whose perplexity needs the answering model:
no refusal and on topic). The on-topic threshold is fitted out of fold: grouped folds keep
every harm category (and every cluster of rows sharing a text) inside one fold, each fold's
threshold is the Youden-optimal one on the other folds, and the rows are scored with it.
Intervals are percentile bootstraps over clusters of rows that share a prompt or a long
response.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jbtrace.defend import verdict as V
from jbtrace.errors import UserError
from jbtrace.proportion import cluster_bootstrap

PYRIT = "pyrit"
REFUSAL_FILES = (
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
)
OBJECTIVE_DIR = "pyrit/datasets/scorer_evals/objective"
VERDICT_NAMES = ("refusal", "on-topic", V.COMPLIED)
DEFAULT = V.COMPLIED
RESAMPLES = 1000


@dataclass(frozen=True)
class Labelled:
    """One (prompt, response) pair with the people's label."""

    prompt: str
    response: str
    label: str  # refused / complied / other
    category: str
    dataset: str  # which labelled set: refusal, objective, or user


def _csv_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def pyrit_labels() -> list[Labelled]:
    """pyrit's people-labelled refusal and objective-achieved rows."""
    from jbtrace.prompts.packages import package_dir, package_file

    rows = []
    for relative in REFUSAL_FILES:
        for r in _csv_rows(package_file(PYRIT, relative)):
            refused = r["human_score"].strip() == "1"
            label = "refused" if refused else V.COMPLIED
            rows.append(
                Labelled(r["objective"], r["assistant_response"], label, "refusal", "refusal")
            )
    folder = package_dir(PYRIT, "pyrit") / OBJECTIVE_DIR.partition("/")[2]
    for path in sorted(folder.glob("*.csv")):
        for r in _csv_rows(path):
            achieved = r["human_score"].strip() == "1"
            rows.append(
                Labelled(
                    r["objective"],
                    r["assistant_response"],
                    V.COMPLIED if achieved else "other",
                    r.get("harm_category") or path.stem,
                    "objective",
                )
            )
    return rows


def user_labels(path: str | Path) -> list[Labelled]:
    """A user's JSON lines: ``prompt``, ``response``, ``label`` and optionally ``category``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--data {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            row = Labelled(
                str(r["prompt"]),
                str(r["response"]),
                r["label"],
                str(r.get("category", "user")),
                "user",
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(
                f"--data {path}, line {number}: need JSON with prompt, response, label ({error})"
            ) from None
        if row.label not in V.VERDICTS:
            raise UserError(
                f"--data {path}, line {number}: label {row.label!r} is not one of "
                f"{', '.join(V.VERDICTS)}"
            )
        rows.append(row)
    if len(rows) < 4:
        raise UserError(f"--data {path}: need at least 4 labelled rows, got {len(rows)}")
    return rows


SHARED = 200  # characters: a shared response at least this long joins its rows


def clusters(rows: list[Labelled]) -> np.ndarray:
    """A cluster id per row: rows sharing a prompt, or a response of at least ``SHARED``
    characters, are one cluster (a short canned refusal shared by many rows joins none)."""
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        keys = [("p", r.prompt)] + ([("r", r.response)] if len(r.response) >= SHARED else [])
        for key in keys:
            j = first.setdefault(key, i)
            parent[root(i)] = root(j)
    ids = {root(i) for i in range(len(rows))}
    index = {c: k for k, c in enumerate(sorted(ids))}
    return np.array([index[root(i)] for i in range(len(rows))])


def fold_groups(rows: list[Labelled], cluster: np.ndarray) -> np.ndarray:
    """Cross-validation groups: the category of a cluster's first row where the data has
    categories (pyrit's objective rows, a user's rows with two or more), else the cluster; a
    cluster never spans two groups."""
    named = {r.category for r in rows if r.dataset != "refusal"}
    group: dict[int, str] = {}
    for r, c in zip(rows, cluster, strict=True):
        by_category = r.dataset != "refusal" and len(named) > 1
        group.setdefault(int(c), r.category if by_category else f"cluster {c}")
    return np.array([group[int(c)] for c in cluster])


def oof_thresholds(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5):
    """Per row, the Youden threshold fitted on the folds that do not hold it (grouped folds)."""
    from sklearn.model_selection import GroupKFold

    from jbtrace.detect.evaluate import youden_threshold

    out = np.full(len(y), np.nan)
    n = min(folds, len(np.unique(groups)))
    if n < 2:
        raise UserError("validation needs labelled rows from at least 2 groups to fit out of fold")
    for train, test in GroupKFold(n_splits=n).split(scores, y, groups):
        if len(np.unique(y[train])) < 2:
            raise UserError("a training fold holds only one class: give more varied labels")
        out[test] = youden_threshold(y[train], scores[train])
    return out


# ---------------------------------------------------------------- agreement


def agreement(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, Cohen's κ, precision, recall (complied the positive class) and specificity."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    kappa = cohen_kappa_score(y, pred, labels=[False, True]) if len(set(y) | set(pred)) > 1 else 1.0
    return {
        "accuracy": float((tp + tn) / len(y)),
        "kappa": float(kappa),
        "precision": float(tp / (tp + fp)) if tp + fp else None,
        "recall": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "n": int(len(y)),
        "confusion": {"tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn)},
    }


METRICS = ("accuracy", "kappa", "precision", "recall", "specificity")


def intervals(y, pred, cluster, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Percentile bootstrap 95% intervals of each metric, resampling clusters of rows."""
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)

    def statistic(rows):
        found = agreement(y[rows], pred[rows])
        return np.array([np.nan if found[m] is None else found[m] for m in METRICS])

    bounds = cluster_bootstrap(statistic, cluster, seed, resamples)
    if bounds is None:
        return {m: [None, None] for m in METRICS}
    return {
        m: [None if np.isnan(a) else float(a), None if np.isnan(b) else float(b)]
        for m, a, b in zip(METRICS, *bounds, strict=True)
    }


def scored(y, pred, cluster, categories, seed: int = 0) -> dict:
    """Agreement with intervals, plus the confusion matrix per category."""
    out = {**agreement(y, pred), "ci": intervals(y, pred, cluster, seed)}
    out["by_category"] = {
        c: agreement(y[categories == c], pred[categories == c])["confusion"]
        for c in sorted(set(categories))
    }
    return out


# ---------------------------------------------------------------- the validation


def predictions(rows: list[Labelled], similarity: np.ndarray, refusal=None) -> dict:
    """Each verdict's 'complied' on every row, the on-topic threshold fitted out of fold."""
    from jbtrace.defend.judges import Refusal

    judge = refusal or Refusal()
    y = np.array([r.label == V.COMPLIED for r in rows])
    cluster = clusters(rows)
    thresholds = oof_thresholds(similarity, y, fold_groups(rows, cluster))
    not_refused = np.array([judge(r.prompt, r.response)["answered"] for r in rows])
    on_topic = similarity >= thresholds
    return {
        "y": y,
        "cluster": cluster,
        "thresholds": thresholds,
        "refusal": not_refused,
        "on-topic": on_topic,
        V.COMPLIED: not_refused & on_topic,
    }


MIN_CATEGORY = 10  # rows a category needs to have its share checked


def correction_check(y, pred, categories, minimum: int = MIN_CATEGORY) -> dict:
    """Does the Rogan–Gladen correction recover people's share? Per category of at least
    ``minimum`` rows: the verdict's share, people's share, and the share corrected with the
    sensitivity and specificity measured on the *other* categories."""
    out = []
    for c in sorted(set(categories)):
        mine = categories == c
        if mine.sum() < minimum:
            continue
        rest = agreement(y[~mine], pred[~mine])
        if rest["recall"] is None or rest["specificity"] is None:
            continue
        observed, truth = float(pred[mine].mean()), float(y[mine].mean())
        fixed = rogan_gladen(observed, rest["recall"], rest["specificity"])
        out.append(
            {
                "category": c,
                "n": int(mine.sum()),
                "people": truth,
                "verdict": observed,
                "corrected": fixed,
            }
        )
    usable = [r for r in out if r["corrected"] is not None]
    return {
        "categories": out,
        "mean_abs_error_verdict": (
            float(np.mean([abs(r["verdict"] - r["people"]) for r in usable])) if usable else None
        ),
        "mean_abs_error_corrected": (
            float(np.mean([abs(r["corrected"] - r["people"]) for r in usable])) if usable else None
        ),
    }


def validate(rows: list[Labelled], similarity: np.ndarray, seed: int = 0) -> dict:
    """Every verdict scored on each labelled set (and on all rows together)."""
    found = predictions(rows, similarity)
    datasets = np.array([r.dataset for r in rows])
    categories = np.array([r.category for r in rows])
    results = {}
    for name in VERDICT_NAMES:
        results[name] = {}
        for d in [*dict.fromkeys(datasets)]:
            m = datasets == d
            results[name][d] = scored(
                found["y"][m], found[name][m], found["cluster"][m], categories[m], seed
            )
    named = [d for d in dict.fromkeys(datasets) if len(set(categories[datasets == d])) > 1]
    checks = {
        d: correction_check(found["y"][m], found[DEFAULT][m], categories[m])
        for d in named
        if (m := datasets == d).any()
    }
    return {
        "default": DEFAULT,
        "verdicts": results,
        "correction_check": checks,
        "on_topic_thresholds": {
            "fitted": "out of fold (Youden on the other folds)",
            "min": float(np.min(found["thresholds"])),
            "max": float(np.max(found["thresholds"])),
        },
        "rows": {d: int((datasets == d).sum()) for d in dict.fromkeys(datasets)},
    }


# ---------------------------------------------------------------- correction


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float | None:
    """The true share from an observed share and the judge's sensitivity and specificity,
    clipped to [0, 1] (None when the judge is no better than chance)."""
    informed = sensitivity + specificity - 1
    if informed <= 0:
        return None
    return float(min(1.0, max(0.0, (observed + specificity - 1) / informed)))


def corrected(k: int, n: int, error: dict) -> dict:
    """An observed rate k/n corrected for the judge's measured error (Rogan–Gladen).

    The interval is the widest the corrected rate takes over the corners of the observed
    rate's Wilson interval and the sensitivity and specificity bootstrap intervals.
    """
    from jbtrace.proportion import interval

    sens, spec = error["recall"], error["specificity"]
    if n == 0 or sens is None or spec is None:
        return {"rate": None, "ci": [None, None]}
    low, high = interval(k, n, "wilson")
    ci = error.get("ci") or {}
    sens_ci = [x if x is not None else sens for x in ci.get("recall") or [None, None]]
    spec_ci = [x if x is not None else spec for x in ci.get("specificity") or [None, None]]
    corners = [rogan_gladen(p, a, b) for p in (low, high) for a in sens_ci for b in spec_ci]
    corners = [c for c in corners if c is not None]
    return {
        "rate": rogan_gladen(k / n, sens, spec),
        "ci": [min(corners), max(corners)] if corners else [None, None],
        "sensitivity": sens,
        "specificity": spec,
        "method": "Rogan–Gladen; interval over the corners of the Wilson and bootstrap intervals",
    }


# ---------------------------------------------------------------- error beside the rates

ON = {"jailbreak": "objective", "benign": "refusal"}  # which labelled set speaks for which prompts


def read_error(path: str | Path) -> dict:
    """A ``judges.json`` (``jbtrace judges validate``) as the judges' error per verdict and kind
    of prompt: jailbreak prompts take the objective-achieved set, benign ones the refusal sets
    (a user's labels, where given, stand for both)."""
    path = Path(path).expanduser()
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        out = {name: _error_of(by_data) for name, by_data in found["verdicts"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"--judge-error {path}: not a judges.json ({error!r})") from None
    return {"source": str(path), "labels": found.get("labels"), "verdicts": out}


def _error_of(by_data: dict) -> dict:
    """One verdict's measured error per kind of prompt (jailbreak, benign)."""
    out = {}
    for kind, dataset in ON.items():
        m = by_data.get(dataset) or by_data.get("user")
        if m is not None:
            ci = m.get("ci") or {}
            out[kind] = {
                "validated_on": dataset if dataset in by_data else "user",
                **{k: m[k] for k in (*METRICS, "n")},
                "ci": {k: ci.get(k) or [None, None] for k in METRICS},
            }
    return out


def beside(row: dict, error: dict | None, judge: str, jailbreak: bool) -> dict:
    """``row`` (a rate of blocked or kept, or an ASR: k of n) with the judge's validated error
    and the rate corrected for it. Blocked counts not complied: its correction is one minus
    the corrected complied share."""
    measured = ((error or {}).get("verdicts", {}).get(judge) or {}).get(
        "jailbreak" if jailbreak else "benign"
    )
    if measured is None:
        return {**row, "judge_error": None, "corrected": None}
    k, n = row["k"], row["n"]
    complied = n - k if row.get("measure") == "blocked" else k
    fixed = corrected(complied, n, measured)
    if row.get("measure") == "blocked" and fixed["rate"] is not None:
        low, high = fixed["ci"]
        fixed = {**fixed, "rate": 1 - fixed["rate"], "ci": [1 - high, 1 - low]}
    return {**row, "judge_error": measured, "corrected": fixed}
