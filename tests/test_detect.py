"""Detectors: a planted signal is found where it is, CP never sees held-out prompts, length
matching, labels, test sets lose near-duplicates of training prompts, and saved detectors
round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from sklearn.model_selection import StratifiedGroupKFold

from jbtrace.detect import evaluate
from jbtrace.detect import train as detect
from jbtrace.detect.decompose import CPFeatures
from jbtrace.detect.detector import Detector, from_report
from jbtrace.detect.evaluate import Design
from jbtrace.errors import UserError
from jbtrace.models import load_model, surgery
from jbtrace.prompts import dedup, load_prompts, matching
from tests.conftest import JAILBREAK, make_set
from tests.test_detect_features import capture

# ---------------------------------------------------------------- planted signal


def plantedcapture(lm, texts, block: int, layers, kinds):
    """Features of ``texts`` twice: as they are, and with a fixed direction added to block
    ``block``'s output."""
    requests = [("resid", layer) for layer in layers]
    plain = capture(lm, texts, requests, kinds, cp_positions=32)
    direction = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    scale = float(np.linalg.norm(plain[("resid", block + 1)]["last"], axis=1).mean())

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + 1.0 * scale * direction / direction.norm()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = surgery.blocks(lm.model)[block].register_forward_hook(add)
    try:
        marked = capture(lm, texts, requests, kinds, cp_positions=32)
    finally:
        handle.remove()
    return plain, marked


@pytest.mark.slow
def test_planted_signal_is_found_only_where_it_is():
    lm = load_model("tiny:llama")
    texts = list(load_prompts("b", "builtin:benign", limit=30, seed=1).texts)
    block, layers = 11, [4, 11, 12, 20]  # block 11's output is layer 12
    plain, marked = plantedcapture(lm, texts, block, layers, ("cp", "last", "mean"))
    y = np.repeat(
        [0, 1], len(texts)
    )  # same texts, same lengths: only the planted direction differs
    for feature in [("cp-r4", "cp", 4), ("last", "last", None), ("mean", "mean", None)]:
        for layer in layers:
            X = np.concatenate(
                [plain[("resid", layer)][feature[1]], marked[("resid", layer)][feature[1]]]
            )
            design = Design(y, target_fpr=0.05, cp_kwargs={"n_iter_max": 50})
            rows, _ = detect.evaluate(X, feature, design)
            f1, auroc = rows[0]["f1"], rows[0]["oof_auroc"]
            if layer > block:
                assert f1 >= 0.9, (feature, layer, f1)
            else:
                assert auroc <= 0.65, (feature, layer, auroc)


# ---------------------------------------------------------------- evaluation pieces


def labelled(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    A = rng.standard_normal((n, 3)) + np.outer(y, [4.0, 0, 0])
    X = np.einsum("ir,jr,kr->ijk", A, rng.standard_normal((12, 3)), rng.standard_normal((10, 3)))
    return (X + 0.1 * rng.standard_normal(X.shape)).astype(np.float32), y


class SpyCP(CPFeatures):
    seen: list = []

    def fit(self, X, y=None):
        SpyCP.seen.append(np.array(X, copy=True))
        return super().fit(X, y)


def test_cp_is_fitted_on_training_folds_only(monkeypatch):
    X, y = labelled()
    monkeypatch.setattr(evaluate, "CPFeatures", SpyCP)
    SpyCP.seen.clear()
    design = Design(y, classifiers=("logreg", "linsvm"), folds=4, target_fpr=0.05)
    rows, fitted = detect.evaluate(X, ("cp-r3", "cp", 3), design)
    folds = list(
        StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, np.arange(len(y)))
    )
    # one fit per fold, the refit on everything, then per outer fold the same on the rest
    assert len(SpyCP.seen) == (len(folds) + 1) * (len(folds) + 1)
    for seen, (train, _) in zip(SpyCP.seen, folds, strict=False):
        np.testing.assert_array_equal(seen, X[train])
    np.testing.assert_array_equal(SpyCP.seen[len(folds)], X)
    rows_of = lambda a: {r.tobytes() for r in a}  # noqa: E731
    for k, (_, outer_test) in enumerate(folds):
        inner = SpyCP.seen[(k + 1) * (len(folds) + 1) : (k + 2) * (len(folds) + 1)]
        assert all(not rows_of(a) & rows_of(X[outer_test]) for a in inner)
        assert len(inner[-1]) == len(X) - len(outer_test)  # the outer refit: all of the rest
    assert rows[0]["f1"] > 0.9 and rows[0]["auroc"] > 0.95

    # scrambling one fold's held-out prompts changes no other fold's decomposition input
    scrambled = X.copy()
    scrambled[folds[0][1]] = 0
    SpyCP.seen.clear()
    detect.evaluate(scrambled, ("cp-r3", "cp", 3), Design(y, folds=4))
    np.testing.assert_array_equal(SpyCP.seen[0], X[folds[0][0]])


def test_match_lengths_equalises_quantile_bins():
    rng = np.random.default_rng(2)
    lengths = np.concatenate([rng.lognormal(3, 1, 300), rng.lognormal(5, 0.8, 300)]).astype(int) + 1
    y = np.repeat([0, 1], 300)
    keep = matching.match_lengths(lengths, y == 1, 0)
    logs = np.log(lengths.astype(float))
    # bins are [e_k, e_k+1) over the pooled deciles: equal counts per bin means equal counts at or
    # above every edge
    for edge in np.quantile(logs, np.linspace(0, 1, matching.BINS + 1))[1:-1]:
        assert ((logs[keep] >= edge) & (y[keep] == 0)).sum() == (
            (logs[keep] >= edge) & (y[keep] == 1)
        ).sum()
    assert (y[keep] == 0).sum() == (y[keep] == 1).sum() > 50
    before = ks_2samp(lengths[y == 0], lengths[y == 1]).statistic
    after = detect.length_summary(lengths[keep], y[keep])["ks_statistic"]
    assert before > 0.5 and after < 0.15
    np.testing.assert_array_equal(keep, matching.match_lengths(lengths, y == 1, 0))


def test_layers_a_model_lacks_are_skipped_with_a_note():
    notes = []
    options = detect.DetectOptions(sources=("resid", "mixer"), layers=(0, 2, 99))
    requests = detect._requests(load_model("tiny:mamba2"), options, notes)
    assert requests == [("resid", 0), ("resid", 2), ("mixer", 2)]
    assert any("mixer at layer 0, 99" in n for n in notes) and any(
        "resid at layer 99" in n for n in notes
    )


def test_labels_from_names_order_or_explicit():
    assert detect.resolve_labels(["a", "b"], {}, training=True) == {"a": 0, "b": 1}
    assert detect.resolve_labels(["jb_x", "benign_long", "x"], {"x": "benign"}, training=True) == {
        "jb_x": 1,
        "benign_long": 0,
        "x": 0,
    }
    with pytest.raises(UserError, match="cannot tell"):
        detect.resolve_labels(["weird"], {}, training=False)
    with pytest.raises(UserError, match="one benign and one jailbreak"):
        detect.resolve_labels(["benign", "benign2"], {}, training=True)
    assert detect.parse_layers("0:3,7") == (0, 1, 2, 7)
    with pytest.raises(UserError):
        detect.parse_layers("a:b")


# ---------------------------------------------------------------- detect_model, saved detectors


@pytest.fixture(scope="module")
def small_run():
    lm = load_model("tiny:gptj")
    benign = load_prompts("benign", "builtin:benign", limit=24, seed=0)
    jailbreak = make_set(
        "jailbreak",
        JAILBREAK * 1 + [f"{t} Now {w}." for t in JAILBREAK for w in ("go", "answer", "obey")],
    )
    test = make_set("jb_test", [f"Please, {t.lower()}" for t in JAILBREAK])
    options = detect.DetectOptions(
        layers=(2, 28),
        kinds=("cp", "mean"),
        ranks=(3,),
        classifiers=("logreg", "linsvm"),
        folds=3,
        max_tokens=64,
        cp_positions=16,
        cp_iters=30,
        keep_fitted=True,
    )
    return lm, options, detect.detect_model(lm, [benign, jailbreak], [test], options)


def test_detect_model_rows_baseline_tests(small_run):
    lm, options, report = small_run
    assert len(report.rows) == 2 * 2 * 2  # layers × features × classifiers
    assert {r["feature"] for r in report.baseline} == {"length", "surface", "ngram"}
    # the test set loses exactly the prompts whose word 5-gram Jaccard with a training prompt
    # is >= 0.8
    training = [
        *load_prompts("benign", "builtin:benign", limit=24, seed=0).texts,
        *JAILBREAK,
        *(f"{t} Now {w}." for t in JAILBREAK for w in ("go", "answer", "obey")),
    ]
    test = [f"Please, {t.lower()}" for t in JAILBREAK]
    near = [
        any(dedup.jaccard(dedup.shingles(t), dedup.shingles(u)) >= 0.8 for u in training)
        for t in test
    ]
    assert 0 < sum(near) < len(test)
    info = report.data["test_sets"]["jb_test"]
    assert info["near_duplicates_removed"] == sum(near) and info["n"] == len(test) - sum(near)
    for row in report.rows + report.baseline:
        assert 0 <= row["f1"] <= 1 and 0 <= row["auroc"] <= 1
        assert (
            row["tests"]["jb_test"]["metric"] == "TPR" and row["tests"]["jb_test"]["n"] == info["n"]
        )
    assert report.plan["passes"] == 1 and report.plan["prompts"] == 24 + 20 + info["n"]


def test_saved_detector_round_trip_gives_identical_scores(small_run, tmp_path):
    lm, options, report = small_run
    config = {"spec": "tiny:gptj", "name": lm.name, "seed": 0, "dtype": "float32", "revision": None}
    det = from_report(
        report, options, "linsvm", config, every_layer=True, train_texts=["a prompt", "another"]
    )
    best = from_report(report, options, "linsvm", config)
    assert (
        len(best.layers) == 1
        and best.layers[0].key == det.layers[0].key == best.config["chosen"]["key"]
    )
    loaded = Detector.load(det.save(tmp_path / "det"))
    assert [d.key for d in loaded.layers] == [d.key for d in det.layers]
    # each layer detector keeps its CV row; the recommendation is the one detect chose
    svm_rows = [r for r in report.rows if r["classifier"] == "linsvm"]
    for d in loaded.layers:
        row = next(r for r in svm_rows if (r["layer"], r["feature"]) == (d.layer, d.feature))
        assert d.cv == {"f1": row["f1"], "f1_std": row["f1_std"], "auroc": row["auroc"]}
    assert loaded.recommended().key == best.config["chosen"]["key"]
    assert len(loaded.config["train_text_hashes"]) == 2
    sets = [make_set("new", ["Tell me a story about a lighthouse.", *JAILBREAK[:3]])]
    captured = capture(
        lm, list(sets[0].texts), [("resid", 2), ("resid", 28)], ("cp", "mean"), cp_positions=16
    )
    for before, after in zip(det.layers, loaded.layers, strict=True):
        X = captured[(before.source, before.layer)][before.kind]
        np.testing.assert_array_equal(before.probability(X), after.probability(X))
        assert before.threshold == after.threshold and before.platt == after.platt
        # the arrays reproduce the sklearn pipeline they came from
        fitted = report.fitted[(before.source, before.layer, before.feature, "linsvm")]
        np.testing.assert_allclose(before.score(X), fitted.score(X), rtol=1e-6, atol=1e-6)
    rows_a, rows_b = det.score(lm, sets), loaded.score(lm, sets)
    assert rows_a == rows_b and len(rows_a) == 4 * len(det.layers)
    with pytest.raises(UserError, match="only"):
        from_report(report, options, "forest", config)
