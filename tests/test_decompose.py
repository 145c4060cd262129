"""CPFeatures: exact recovery, agreement with tensorly, held-out projection, no leakage."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from jbtrace.detect.decompose import CPFeatures

SHAPE = (60, 20, 16)


def low_rank(n=SHAPE[0], rank=3, seed=0):
    """An exactly rank-`rank` tensor and its true factors."""
    rng = np.random.default_rng(seed)
    A, P, H = (rng.standard_normal((d, rank)) for d in (n, *SHAPE[1:]))
    return np.einsum("ir,jr,kr->ijk", A, P, H).astype(np.float32), A


def rel_err(X, A, P, H):
    return np.linalg.norm(X - np.einsum("ir,jr,kr->ijk", A, P, H)) / np.linalg.norm(X)


def labelled(n=80, seed=1):
    """Low-rank + noise prompts whose first component separates two classes."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    A = rng.standard_normal((n, 3)) + np.outer(y, [3.0, 0, 0])
    P, H = rng.standard_normal((SHAPE[1], 3)), rng.standard_normal((SHAPE[2], 3))
    X = np.einsum("ir,jr,kr->ijk", A, P, H) + 0.1 * rng.standard_normal((n, *SHAPE[1:]))
    return X.astype(np.float32), y


def test_exact_low_rank_reconstruction():
    X, _ = low_rank()
    cp = CPFeatures(rank=3).fit(X)
    assert cp.reconstruction_error_ < 1e-4
    assert rel_err(X, cp.train_factors_, cp.position_factors_, cp.hidden_factors_) < 1e-4
    assert cp.position_factors_.shape == (20, 3) and cp.hidden_factors_.shape == (16, 3)
    np.testing.assert_allclose(np.linalg.norm(cp.hidden_factors_, axis=0), 1, rtol=1e-5)
    assert np.all(np.diff(cp.weights_) <= 0)


def test_agrees_with_tensorly():
    import tensorly as tl
    from tensorly.decomposition import parafac

    rng = np.random.default_rng(2)
    X = low_rank()[0] + 0.3 * rng.standard_normal(SHAPE).astype(np.float32)
    ours = CPFeatures(rank=3, n_iter_max=30, tol=0, dtype="float64").fit(X)
    ref = parafac(X.astype(np.float64), 3, init="svd", n_iter_max=30, tol=0)
    ref_err = np.linalg.norm(X - tl.cp_to_tensor(ref)) / np.linalg.norm(X)
    assert ours.n_iter_ == 30
    assert ours.reconstruction_error_ == pytest.approx(ref_err, rel=1e-3)


def test_heldout_projection_recovers_true_factors():
    X, A_true = low_rank(n=100, seed=3)
    train, test = np.arange(80), np.arange(80, 100)
    cp = CPFeatures(rank=3).fit(X[train])
    A_test = cp.transform(X[test])
    assert rel_err(X[test], A_test, cp.position_factors_, cp.hidden_factors_) < 1e-4
    # CP is unique up to permutation and scale: each recovered column is a true column
    corr = np.corrcoef(A_test.T, A_true[test].T)[:3, 3:]
    np.testing.assert_allclose(np.sort(np.abs(corr).max(axis=1)), 1, atol=1e-4)


def test_transform_of_training_data_equals_fit_transform():
    X, _ = labelled()
    cp = CPFeatures(rank=3)
    np.testing.assert_allclose(cp.fit_transform(X), cp.transform(X), rtol=1e-4, atol=1e-4)


def test_heldout_rows_never_change_the_fit():
    X, _ = labelled()
    train = np.arange(60)
    garbage = X.copy()
    garbage[60:] = np.random.default_rng(9).standard_normal(garbage[60:].shape) * 100
    a, b = CPFeatures(rank=3).fit(X[train]), CPFeatures(rank=3).fit(garbage[train])
    for name in ("position_factors_", "hidden_factors_", "train_factors_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


class SpyCP(CPFeatures):
    """Records the rows every `fit` sees (clones share the class-level list)."""

    seen: list = []

    def fit(self, X, y=None):
        SpyCP.seen.append(np.array(X, copy=True))
        return super().fit(X, y)


def cv_pipeline(X, y, step):
    pipe = Pipeline([("cp", step), ("clf", LogisticRegression(max_iter=1000))])
    cv = StratifiedKFold(4, shuffle=True, random_state=0)
    return cross_validate(pipe, X, y, cv=cv, return_estimator=True, return_indices=True)


def test_no_leakage_in_cross_validation():
    X3, y = labelled()
    X = X3.reshape(len(X3), -1)
    SpyCP.seen.clear()
    res = cv_pipeline(X, y, SpyCP(rank=3, tensor_shape=SHAPE[1:]))
    train_folds, test_folds = res["indices"]["train"], res["indices"]["test"]
    assert len(SpyCP.seen) == len(train_folds)
    for seen, train in zip(SpyCP.seen, train_folds, strict=True):
        np.testing.assert_array_equal(seen, X[train])
    assert res["test_score"].mean() > 0.8

    # Scramble fold 0's held-out rows: fold 0's decomposition and train features must not move.
    scrambled = X.copy()
    scrambled[test_folds[0]] = np.random.default_rng(5).standard_normal(X[test_folds[0]].shape)
    again = cv_pipeline(scrambled, y, CPFeatures(rank=3, tensor_shape=SHAPE[1:]))
    fit0, refit0 = res["estimator"][0]["cp"], again["estimator"][0]["cp"]
    for name in ("position_factors_", "hidden_factors_", "train_factors_"):
        np.testing.assert_array_equal(getattr(fit0, name), getattr(refit0, name))
    assert not np.allclose(
        fit0.transform(X[test_folds[0]]), refit0.transform(scrambled[test_folds[0]])
    )


def test_project_dim_shapes_and_determinism():
    X, y = labelled()
    fit = lambda seed: CPFeatures(rank=4, project_dim=8, random_state=seed).fit(X)  # noqa: E731
    a, b, c = fit(0), fit(0), fit(1)
    assert a.projection_.shape == (16, 8) and a.hidden_factors_.shape == (8, 4)
    assert a.transform(X[:5]).shape == (5, 4)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert not np.array_equal(a.projection_, c.projection_)
    flat = X.reshape(len(X), -1)
    step = lambda: CPFeatures(rank=3, project_dim=8, tensor_shape=SHAPE[1:])  # noqa: E731
    scores = [cv_pipeline(flat, y, step())["test_score"] for _ in range(2)]
    np.testing.assert_array_equal(*scores)
    assert scores[0].mean() > 0.8


def test_random_init_is_seeded_and_torch_input_works():
    X, _ = labelled()
    a = CPFeatures(rank=3, init="random", random_state=4).fit(X)
    b = CPFeatures(rank=3, init="random", random_state=4).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(a.train_factors_, b.train_factors_)


def test_transform_from_restored_factors():
    """A detector restores the fitted factors (any float dtype) onto a fresh estimator."""
    X, _ = labelled()
    cp = CPFeatures(rank=3).fit(X)
    restored = CPFeatures(rank=3)
    restored.projection_ = None
    restored.position_factors_ = cp.position_factors_.astype(np.float64)
    restored.hidden_factors_ = cp.hidden_factors_.astype(np.float64)
    np.testing.assert_allclose(restored.transform(X), cp.train_factors_, rtol=1e-4, atol=1e-4)


def test_bad_shapes_raise():
    X, _ = labelled()
    with pytest.raises(ValueError):
        CPFeatures().fit(X.reshape(len(X), -1))
    cp = CPFeatures(rank=2).fit(X)
    with pytest.raises(ValueError):
        cp.transform(X[:, :10])
    with pytest.raises(ValueError):
        CPFeatures(init="nope").fit(X)
