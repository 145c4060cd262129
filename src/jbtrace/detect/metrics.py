"""Metrics that fit a guard, on out-of-fold scores: AUROC with a bootstrap interval over
near-duplicate clusters (siblings are not independent prompts), FPR at a fixed TPR with its
Clopper–Pearson interval, and calibration fitted and scored on different folds (Brier score and
a reliability table)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from jbtrace import proportion

RESAMPLES = 200  # bootstrap resamples of the clusters
RELIABILITY_BINS = 10


def auroc_interval(y, scores, groups, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """AUROC and its percentile 95% interval from resampling whole groups with replacement."""
    y, scores = np.asarray(y), np.asarray(scores, float)

    def statistic(idx):
        return roc_auc_score(y[idx], scores[idx]) if len(set(y[idx])) == 2 else np.nan

    bounds = proportion.cluster_bootstrap(statistic, groups, seed, resamples)
    low, high = bounds if bounds is not None else (np.nan, np.nan)
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "ci_low": float(low),
        "ci_high": float(high),
        "method": f"percentile bootstrap over {len(np.unique(groups))} near-duplicate clusters",
    }


def fpr_at_tpr(y, scores, tpr: float = 0.95) -> dict:
    """FPR at the highest threshold that flags at least ``tpr`` of the jailbreak scores (set on
    those same scores), with its Clopper–Pearson interval over the benign prompts."""
    y, scores = np.asarray(y), np.asarray(scores, float)
    jb = np.sort(scores[y == 1])[::-1]
    threshold = jb[int(np.ceil(tpr * len(jb))) - 1]
    return {"tpr": tpr, "threshold": float(threshold), **proportion.rate(
        scores[y == 0] >= threshold, "clopper-pearson"
    )}  # fmt: skip


def calibration(y, scores, folds: list[np.ndarray], seed: int = 0) -> dict:
    """Sigmoid calibration fitted on the other folds' scores and applied to each fold, then the
    Brier score and a reliability table (equal-width probability bins) of those probabilities."""
    y, scores = np.asarray(y), np.asarray(scores, float)
    probs = np.full(len(y), np.nan)
    for test in folds:
        rest = np.setdiff1d(np.arange(len(y)), test)
        if len(set(y[rest])) < 2:
            continue
        lr = LogisticRegression(C=1e4, max_iter=5000, random_state=seed)
        lr.fit(scores[rest, None], y[rest])
        probs[test] = expit(lr.coef_[0, 0] * scores[test] + lr.intercept_[0])
    ok = ~np.isnan(probs)
    bins = np.minimum((probs[ok] * RELIABILITY_BINS).astype(int), RELIABILITY_BINS - 1)
    table = [
        {
            "bin": f"{b / RELIABILITY_BINS:.1f}-{(b + 1) / RELIABILITY_BINS:.1f}",
            "n": int((bins == b).sum()),
            "mean_predicted": float(probs[ok][bins == b].mean()),
            "observed": float(y[ok][bins == b].mean()),
        }
        for b in range(RELIABILITY_BINS)
        if (bins == b).any()
    ]
    return {
        "brier": float(np.mean((probs[ok] - y[ok]) ** 2)),
        "fitted_on": "the other folds' out-of-fold scores",
        "reliability": table,
    }
