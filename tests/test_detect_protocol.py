"""Evaluation that cannot flatter: source-held-out fitting never sees the held-out source,
thresholds hit their target FPR, near-duplicates never straddle a split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.proportion import proportion_confint

from jbtrace.detect import evaluate
from jbtrace.detect.decompose import CPFeatures
from jbtrace.detect.evaluate import Design
from jbtrace.prompts import PromptSet, dedup, load_prompts, neardup

# ---------------------------------------------------------------- threshold at a target FPR


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_threshold_fpr_is_within_its_binomial_ci_of_the_target(target):
    """Benign scores N(0, 1): the true FPR of the chosen threshold is 1 − Φ(t)."""
    n, repeats, inside = 2000, 200, 0
    low, high = proportion_confint(round(target * n), n, alpha=0.05, method="beta")
    for seed in range(repeats):
        benign = np.random.default_rng(seed).standard_normal(n)
        t = evaluate.threshold_at_fpr(benign, target)
        assert (benign >= t).mean() <= target  # never above the target on the scores it was set on
        inside += low <= stats.norm.sf(t) <= high
    assert inside / repeats >= 0.9, inside / repeats


def test_rate_interval_is_clopper_pearson():
    flags = np.array([True] * 3 + [False] * 97)
    r = evaluate.rate(flags)
    assert r["rate"] == 0.03 and r["n"] == 100
    assert r["ci_low"] == pytest.approx(stats.beta.ppf(0.025, 3, 98))
    assert r["ci_high"] == pytest.approx(stats.beta.ppf(0.975, 4, 97))


# ---------------------------------------------------------------- source-held-out protocol


def sourced(seed=0, n=40, planted=5.0):
    """Four sources of 2-D features: class signal in dim 0; only jailbreak source j2
    carries dim 1."""
    rng = np.random.default_rng(seed)
    sources = np.repeat(["b1", "b2", "j1", "j2"], n)
    y = np.repeat([0, 0, 1, 1], n)
    X = rng.standard_normal((4 * n, 3))
    X[:, 0] += 3.0 * (sources == "j1")  # j2 looks benign on dim 0: its only mark is the planted dim
    X[sources == "j2", 1] += planted
    return X, y, sources


def test_a_token_only_the_held_out_source_carries_cannot_be_learned():
    X, y, sources = sourced()
    design = Design(y, sources=sources, target_fpr=0.05, seed=0)
    rows, _ = evaluate.evaluate(X, ("mean", "mean", None), design)
    held = rows[0]["held_out"]
    assert set(held) == {"b1", "b2", "j1", "j2"}
    # held out, j2 looks like benign prompts: it is flagged at about the benign rate
    assert held["j2"]["rate"] <= 0.2, held["j2"]
    # ranking is the inner contest (out-of-fold TPR), blind to the held-out sources
    assert rows[0]["worst_held_out"]["source"] == "j2"
    assert rows[0]["selection"] == rows[0]["tpr_at_fpr"]["0.05"]["rate"]
    # inside the training data the planted dim is learned: out-of-fold CV catches j2
    oof_design = Design(y, target_fpr=0.05, seed=0)
    _, fitted = evaluate.evaluate(X, ("mean", "mean", None), oof_design)
    assert (fitted["logreg"].score(X[sources == "j2"]) >= fitted["logreg"].threshold).mean() >= 0.8


class Spy:
    """Records every array the fold's CP, scaler and classifier are fitted on."""

    seen: list = []

    @classmethod
    def wrap(cls, monkeypatch, klass):
        original = klass.fit

        def fit(self, X, *args, **kwargs):
            cls.seen.append((klass.__name__, np.array(X, copy=True)))
            return original(self, X, *args, **kwargs)

        monkeypatch.setattr(klass, "fit", fit)


@pytest.mark.parametrize("kind", ["mean", "cp"])
def test_held_out_source_reaches_no_fit_and_no_threshold(monkeypatch, kind):
    X, y, sources = sourced(n=30)
    if kind == "cp":  # (prompts, positions, hidden) with the source's mark in one cell
        X = np.einsum("ik,j->ijk", X, np.linspace(1, 2, 6)).astype(np.float32)
    marked = X.copy()
    marked[sources == "b2"] = 777.0  # anything the held-out source carries
    for klass in (CPFeatures, StandardScaler, LogisticRegression):
        Spy.wrap(monkeypatch, klass)
    monkeypatch.setattr(Design, "held_out_sources", lambda self: (["b2"], []))
    feature = ("cp-r2", "cp", 2) if kind == "cp" else ("mean", "mean", None)
    results = []
    for features in (X, marked):
        Spy.seen.clear()
        design = Design(y, sources=sources, target_fpr=0.05, cp_kwargs={"n_iter_max": 20})
        outer, scores, _ = evaluate._outer(features, feature, design)
        held = {c: evaluate._held_out_view(e) for c, e in outer.items()}
        assert Spy.seen and all(not (a == 777.0).any() for _, a in Spy.seen)
        assert {name for name, _ in Spy.seen} == ({"CPFeatures"} if kind == "cp" else set()) | {
            "StandardScaler",
            "LogisticRegression",
        }
        results.append((held["logreg"]["b2"], scores["logreg"]["b2"]))
    (plain, plain_scores), (mark, mark_scores) = results
    assert (
        plain["threshold"] == mark["threshold"] and plain["at_fpr"].keys() == mark["at_fpr"].keys()
    )
    assert not np.array_equal(plain_scores, mark_scores)  # the held-out source itself was scored


def test_near_copies_of_a_held_out_source_leave_training(monkeypatch):
    X, y, sources = sourced(n=20)
    clusters = np.arange(len(y))
    j1, j2 = np.flatnonzero(sources == "j1"), np.flatnonzero(sources == "j2")
    clusters[j2[:3]] = clusters[j1[:3]]  # three j2 prompts copy j1 prompts
    X = X.copy()
    X[j1[:3]] = 555.0  # the copies in j1 carry a mark no fit may see while j2 is held out
    seen = []
    original = StandardScaler.fit

    def fit(self, Z, *args, **kwargs):
        seen.append(np.array(Z, copy=True))
        return original(self, Z, *args, **kwargs)

    monkeypatch.setattr(StandardScaler, "fit", fit)
    monkeypatch.setattr(Design, "held_out_sources", lambda self: (["j2"], []))
    design = Design(y, clusters=clusters, sources=sources)
    outer, scores, _ = evaluate._outer(X, ("mean", "mean", None), design)
    entry = outer["logreg"]["j2"]
    # j2 is scored whole; its near-copies in j1 left training (and every fit) meanwhile
    assert entry["near_copies_out_of_training"] == 3 and entry["jailbreak"]["n"] == 20
    assert len(scores["logreg"]["j2"]) == 20
    assert seen and all(not (Z == 555.0).any() for Z in seen)


def test_a_source_alone_in_its_class_is_not_held_out():
    X, y, sources = sourced(n=10)
    sources = np.where(sources == "b2", "b1", sources)
    assert Design(y, sources=sources).held_out_sources() == (["j1", "j2"], ["b1"])


def test_prompt_sets_carry_per_prompt_sources():
    from jbtrace.detect.train import prompt_sources

    plain = PromptSet("jb", ("a", "b"), "garak:x")
    grouped = PromptSet("benign", ("c", "d", "e"), "builtin:benign", groups=("wiki", "own", "wiki"))
    assert plain.group_labels() == ("garak:x", "garak:x")
    assert list(prompt_sources([plain, grouped])) == [
        "jb",
        "jb",
        "benign/wiki",
        "benign/own",
        "benign/wiki",
    ]
    with pytest.raises(ValueError):
        PromptSet("x", ("a",), "s", groups=("g", "h"))


# ---------------------------------------------------------------- near-duplicates


def brute_clusters(texts, threshold):
    grams = [dedup.shingles(t) for t in texts]
    n = len(texts)
    edges = [
        (i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if len(grams[i] & grams[j]) / len(grams[i] | grams[j]) >= threshold
    ]
    graph = csr_matrix(
        (np.ones(len(edges)), ([e[0] for e in edges], [e[1] for e in edges])), shape=(n, n)
    )
    return connected_components(graph, directed=False)[1]


def same_partition(a, b):
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def test_near_duplicate_clusters_match_brute_force_jaccard():
    base = list(load_prompts("b", "builtin:benign", limit=60, seed=3).texts)
    long = [t for t in base if len(t.split()) > 40][:8]
    assert len(long) >= 4
    copies = []
    for t in long:  # one word changed, and a sentence appended: near copies
        words = t.split()
        words[-2] = "zebra"  # two of the word 5-grams change
        copies += [" ".join(words), t + " Thanks a lot."]
    texts = base + copies
    got = neardup.clusters(texts, 0.8)
    want = brute_clusters(texts, 0.8)
    assert same_partition(got, want)
    assert len(set(got)) < len(texts)  # the copies joined their originals
    for t, c in zip(long, range(len(long)), strict=True):
        i = texts.index(t)
        assert got[i] == got[texts.index(copies[2 * c])] == got[texts.index(copies[2 * c + 1])]


def test_grouped_folds_never_split_a_cluster():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    clusters = rng.integers(0, 40, len(y))  # clusters of random sizes across both classes
    design = Design(y, clusters=clusters, folds=5)
    folds = design.splits(np.arange(len(y)))
    assert len(folds) == 5
    for train, test in folds:
        assert not set(clusters[train]) & set(clusters[test])
    assert sorted(np.concatenate([t for _, t in folds])) == list(range(len(y)))


def test_loader_groups_follow_their_prompts_through_cleaning_and_limit(monkeypatch):
    from jbtrace.prompts import sets as L

    raw = ["  a  ", "b", "", "a", "c", "d"]
    groups = ["g1", "g2", "g3", "g4", "g1", "g2"]
    fake = lambda source, seed: (list(raw), {"labels": list(groups)})  # noqa: E731
    monkeypatch.setattr(L.catalog, "load", fake)  # every named source loads through the catalogue
    ps = L.load_prompts("x", "builtin:fake")
    assert ps.texts == ("a", "b", "c", "d") and ps.groups == (
        "g1",
        "g2",
        "g1",
        "g2",
    )  # first occurrence wins
    small = L.load_prompts("x", "builtin:fake", limit=2, seed=1)
    assert small.groups == tuple(
        dict(zip(ps.texts, ps.groups, strict=True))[t] for t in small.texts
    )


def test_one_length_matching_for_compare_and_detect():
    from jbtrace.analysis import compare
    from jbtrace.prompts import matching

    assert compare.match_lengths is matching.match_lengths
    assert "10 quantile bins" in matching.PROCEDURE


def test_cv_and_test_rates_share_one_operating_point():
    X, y, sources = sourced(n=50)
    rows, fitted = evaluate.evaluate(X, ("mean", "mean", None), Design(y, target_fpr=0.05))
    row, det = rows[0], fitted["logreg"]
    assert row["threshold"] == det.threshold
    assert row["fpr"]["rate"] <= 0.05 and row["tpr"]["rate"] == row["tpr_at_fpr"]["0.05"]["rate"]
    probe = np.random.default_rng(9).standard_normal((30, 3))
    evaluate.apply(
        fitted,
        rows,
        {"benign_probe": probe},
        {"benign_probe": 0},
        {"benign_probe": np.full(30, 100)},
    )
    assert row["tests"]["benign_probe"]["rate"] == np.mean(det.score(probe) >= row["threshold"])
    assert row["tests"]["benign_probe"]["fpr_by_length"][0]["tokens"] == "64-127"
