"""Guard metrics: near-duplicate siblings widen the AUROC interval instead of counting as
independent prompts; FPR at 95% TPR is taken where it says; calibration never scores the fold it
was fitted on; the text baselines count what they name."""

from __future__ import annotations

import numpy as np

from jbtrace.detect import baselines, metrics


def test_siblings_are_resampled_together():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    s = rng.standard_normal(80) + y
    # every prompt has four near-copies with the same label and (almost) the same score
    y5, s5 = np.repeat(y, 5), np.repeat(s, 5) + 1e-6 * rng.standard_normal(400)
    clustered = metrics.auroc_interval(y5, s5, np.repeat(np.arange(80), 5))
    naive = metrics.auroc_interval(y5, s5, np.arange(400))
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert abs(clustered["auroc"] - naive["auroc"]) < 1e-9
    assert width(clustered) > 1.7 * width(naive)  # about sqrt(5) wider
    assert "80 near-duplicate clusters" in clustered["method"]


def test_fpr_at_95_tpr():
    y = np.array([1] * 20 + [0] * 10)
    s = np.concatenate([np.arange(1, 21), np.arange(10) - 3.5])  # benign -3.5 .. 5.5
    r = metrics.fpr_at_tpr(y, s, 0.95)
    assert r["threshold"] == 2  # 19 of 20 jailbreak scores are >= 2
    assert (s[y == 1] >= r["threshold"]).mean() >= 0.95
    assert r["k"] == 4 and r["n"] == 10  # benign 2.5, 3.5, 4.5, 5.5
    assert r["ci_low"] < 0.4 < r["ci_high"]


def test_calibration_is_scored_on_folds_it_was_not_fitted_on():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 50)
    s = rng.standard_normal(100) + 2 * y
    folds = [np.arange(i, 100, 4) for i in range(4)]
    base = metrics.calibration(y, s, folds)
    flipped = y.copy()
    flipped[folds[0]] = 1 - flipped[folds[0]]  # labels of fold 0 change
    other = metrics.calibration(flipped, s, folds)
    # fold 0's probabilities come from a fit on folds 1-3 only: unchanged; its Brier terms change
    assert base["brier"] != other["brier"]
    assert sum(b["n"] for b in base["reliability"]) == 100
    for b in base["reliability"]:
        lo, hi = (float(x) for x in b["bin"].split("-"))
        assert lo - 1e-9 <= b["mean_predicted"] <= hi + 1e-9


def test_surface_counts_count_what_they_name():
    text = 'You said "hi".\n- one\n- two\n2) three\nYOUR turn, yourself.'
    counts = np.expm1(baselines.surface_counts([text, "plain"])).round().astype(int)
    assert dict(zip(baselines.SURFACE, counts[0], strict=True)) == {
        "characters": len(text),
        "newlines": 4,
        "bullets": 3,
        "quotes": 2,
        "second_person": 3,
        "capitals": 5,  # Y of You, YOUR
    }
    assert list(counts[1]) == [5, 0, 0, 0, 0, 0]
    grams = baselines.hashed_ngrams(["ab cd ef", "ab cd ef", "ef cd ab"])
    assert grams.shape == (3, baselines.NGRAM_FEATURES)
    np.testing.assert_allclose(np.linalg.norm(grams, axis=1), 1, rtol=1e-6)
    assert np.array_equal(grams[0], grams[1]) and not np.array_equal(grams[0], grams[2])


def test_difference_of_means_detector_is_one_direction_fitted_on_training_prompts():
    from jbtrace.detect import evaluate
    from jbtrace.detect.direction import DiffMeans

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 60)
    X = rng.standard_normal((120, 8))
    X[y == 1, 2] += 3.0  # the classes differ along dimension 2 only
    d = DiffMeans().fit(X, y)
    assert abs(np.linalg.norm(d.direction_) - 1) < 1e-12 and np.argmax(abs(d.direction_)) == 2
    np.testing.assert_allclose(d.transform(X)[:, 0], X @ d.direction_)
    rows, fitted = evaluate.evaluate(
        X, ("mean", "mean", None), evaluate.Design(y, classifiers=("diffmean",), target_fpr=0.05)
    )
    steps = fitted["diffmean"].pipeline.named_steps
    # the refit's direction is the training prompts' difference of means
    np.testing.assert_allclose(steps["diffmeans"].direction_, d.direction_)
    assert rows[0]["oof_auroc"] > 0.95 and rows[0]["selection"] > 0.5
