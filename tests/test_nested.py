"""Nested selection: among candidates of identical true rates the winner's inner score is biased
upward, the outer number of the procedure is not; the margin and headline follow the numbers."""

from __future__ import annotations

import numpy as np

from jbtrace.detect import nested
from jbtrace.detect.ranking import ranked
from jbtrace.views.detect_headline import headline, verdict

TRUE_TPR = 0.6


def candidates(rng, n_candidates=20, n_splits=6, inner_n=100, outer_n=30) -> list[dict]:
    """Rows like ``evaluate``'s under cv: every candidate has the same true TPR everywhere."""
    rows = []
    for i in range(n_candidates):
        folds = {}
        for s in range(n_splits):
            k = int(rng.binomial(outer_n, TRUE_TPR))
            folds[f"fold{s + 1}"] = {
                "inner_selection": rng.binomial(inner_n, TRUE_TPR) / inner_n,
                "inner_auroc": float(rng.uniform()),
                "near_copies_out_of_training": 0,
                "jailbreak": {"k": k, "n": outer_n, "rate": k / outer_n},
                "benign": {"k": 0, "n": outer_n, "rate": 0.0},
            }
        rows.append(
            {
                "source": "resid",
                "layer": i,
                "feature": "mean",
                "classifier": "logreg",
                "selection": rng.binomial(inner_n, TRUE_TPR) / inner_n,
                "oof_auroc": float(rng.uniform()),
                "held_out": {},
                "outer_folds": folds,
            }
        )
    return rows


def test_outer_number_is_unbiased_where_the_inner_one_is_not():
    inner, outer = [], []
    for seed in range(200):
        rows = candidates(np.random.default_rng(seed))
        chosen = nested.chosen(rows, ranked(rows))
        inner.append(chosen["inner_selection"])
        outer.append(chosen["outer"]["tpr"]["rate"])
    assert abs(np.mean(outer) - TRUE_TPR) <= 0.02, np.mean(outer)
    assert np.mean(inner) - TRUE_TPR > 0.05, np.mean(inner)  # the winner of its own contest


def test_each_outer_split_takes_the_winner_on_the_rest():
    rows = candidates(np.random.default_rng(1), n_candidates=3, n_splits=2)
    rows[2]["outer_folds"]["fold1"]["inner_selection"] = 1.0  # wins fold1 on the rest
    rows[2]["outer_folds"]["fold1"]["jailbreak"] = {"k": 3, "n": 30, "rate": 0.1}
    rows[0]["outer_folds"]["fold2"]["inner_selection"] = 1.0
    rows[0]["outer_folds"]["fold2"]["jailbreak"] = {"k": 27, "n": 30, "rate": 0.9}
    result = nested.outer(rows)
    assert result["splits"]["fold1"]["winner"] == nested.candidate(rows[2])
    assert result["splits"]["fold2"]["winner"] == nested.candidate(rows[0])
    assert result["tpr"]["k"] == 30 and result["tpr"]["n"] == 60
    assert result["worst_tpr"] == {"split": "fold1", "rate": 0.1}
    assert result["fpr"]["rate"] == 0.0 and result["tpr"]["ci_low"] < 0.5 < result["tpr"]["ci_high"]


def test_margin_and_the_headline_sentence_follow_the_interval():
    wide = nested.margin({"k": 18, "n": 20}, {"k": 16, "n": 20})
    assert wide["ci_low"] < 0 < wide["ci_high"] and "does not beat" in verdict(wide)
    clear = nested.margin({"k": 190, "n": 200}, {"k": 100, "n": 200})
    assert abs(clear["diff"] - 0.45) < 1e-12 and clear["ci_low"] > 0
    assert verdict(clear).startswith("beats")
    worse = nested.margin({"k": 100, "n": 200}, {"k": 190, "n": 200})
    assert "worse" in verdict(worse)
    rows = candidates(np.random.default_rng(2), n_candidates=4)
    base = candidates(np.random.default_rng(3), n_candidates=2)
    for r in base:
        r["source"] = None
    rep = {
        "chosen": nested.chosen(rows, ranked(rows)) | {"eval_fpr": {}},
        "best_baseline": nested.chosen(base, ranked(base)) | {"eval_fpr": {}},
    }
    tprs = rep["chosen"]["outer"]["tpr"], rep["best_baseline"]["outer"]["tpr"]
    rep["margin"] = nested.margin(*tprs)
    text = " ".join(headline(rep))
    assert "Best text baseline: text mean (logreg)" in text and "Margin in outer TPR" in text
    assert f"{rep['margin']['diff']:+.3f}" in text and verdict(rep["margin"]) in text
