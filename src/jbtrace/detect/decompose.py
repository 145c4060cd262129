"""CP/PARAFAC prompt features: a torch CP-ALS fitted on training prompts only.

Each layer gives a (prompts × positions × hidden) tensor. `CPFeatures.fit` takes a rank-R
CP decomposition of the training tensor; `transform` projects any prompt onto the fixed
position and hidden factors by least squares, so held-out prompts never touch the
decomposition (Kadali & Papalexakis, arXiv 2602.11495). Padded positions must be zeros;
they are fitted as observed zeros, as in the published method.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["CPFeatures", "cp_als"]
_TINY = np.finfo(float).tiny


def _solve_gram(gram: torch.Tensor, mttkrp: torch.Tensor) -> torch.Tensor:
    """Least-squares factor update: rows x with x · gram = mttkrp rows (gram is symmetric)."""
    return torch.linalg.solve(gram, mttkrp.T).T


def _mm_skinny(X2: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """X2 @ M for a thin M, passed column-major (about 2x faster on CPU BLAS than row-major)."""
    return X2 @ M.T.contiguous().T


def _prompt_mttkrp(X: torch.Tensor, P: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """diag(Pᵀ X_i H) for every prompt i, as an (n_prompts, R) matrix."""
    n, J, K = X.shape
    return (_mm_skinny(X.reshape(n * J, K), H).reshape(n, J, -1) * P).sum(1)


def _project(X: torch.Tensor, P: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Prompt factors a_i = argmin ||X_i − P diag(a) Hᵀ|| with P, H fixed."""
    return _solve_gram((P.T @ P) * (H.T @ H), _prompt_mttkrp(X, P, H))


def _unit_scale(M: torch.Tensor) -> torch.Tensor:
    """Per-column divisor giving unit norm with the largest-magnitude entry positive."""
    sign = torch.sign(M.gather(0, M.abs().argmax(0, keepdim=True))[0])
    return M.norm(dim=0).clamp_min(torch.finfo(M.dtype).tiny) * torch.where(sign == 0, 1, sign)


def _leading_eigvecs(gram: torch.Tensor, rank: int, rng: np.random.Generator) -> torch.Tensor:
    """Top-`rank` eigenvectors of a mode Gram matrix (= left singular vectors of the
    unfolding); columns beyond the mode's size are filled with uniform noise, as tensorly does."""
    vecs = torch.linalg.eigh(gram).eigenvectors.flip(1)[:, :rank]
    extra = rank - vecs.shape[1]
    if extra > 0:
        noise = torch.as_tensor(rng.random((gram.shape[0], extra)), dtype=gram.dtype)
        vecs = torch.cat([vecs, noise.to(gram.device)], 1)
    return vecs


def _init_factors(X: torch.Tensor, rank: int, init: str, rng: np.random.Generator):
    """Position and hidden factors to start ALS from (the prompt mode is solved first)."""
    n, J, K = X.shape
    if init == "svd":
        gram_pos = sum(c.matmul(c.transpose(1, 2)).sum(0) for c in X.split(_prompt_chunk(X)))
        gram_hid = X.reshape(n * J, K).T @ X.reshape(n * J, K)
        return _leading_eigvecs(gram_pos, rank, rng), _leading_eigvecs(gram_hid, rank, rng)
    if init == "random":
        return tuple(
            torch.as_tensor(rng.random((d, rank)), dtype=X.dtype).to(X.device) for d in (J, K)
        )
    raise ValueError(f"init must be 'svd' or 'random', got {init!r}")


def _prompt_chunk(X: torch.Tensor, elems: int = 1 << 22) -> int:
    """Prompts per chunk so that one chunk holds about `elems` values."""
    return max(1, elems // (X.shape[1] * X.shape[2]))


def _sq_norm(X: torch.Tensor) -> float:
    """Squared Frobenius norm summed chunkwise (torch's float32 vector_norm drifts ~1e-4)."""
    return sum(float((c * c).sum()) for c in X.split(_prompt_chunk(X)))


def _relative_error(X: torch.Tensor, A, P, H) -> float:
    """||X − [[A, P, H]]|| / ||X||, with the model formed explicitly chunk by chunk."""
    step = _prompt_chunk(X)
    res = sum(
        _sq_norm(torch.einsum("ir,jr,kr->ijk", a, P, H).sub_(x))
        for a, x in zip(A.split(step), X.split(step), strict=True)
    )
    return (res / max(_sq_norm(X), _TINY)) ** 0.5


def cp_als(
    X: torch.Tensor,
    rank: int,
    n_iter_max: int = 100,
    tol: float = 1e-7,
    init: str = "svd",
    rng: np.random.Generator | None = None,
):
    """Rank-`rank` CP-ALS of a 3-way tensor; returns (A, P, H, n_iter).

    A is finally re-solved against the last P and H, so it equals `_project(X, P, H)`.
    Updates the modes in tensorly's order with the same stopping rule (|decrease of the
    relative error| < tol; tol=0 runs exactly n_iter_max sweeps). The two MTTKRPs per
    sweep are single GEMMs on the (prompts·positions × hidden) view: no unfolding copies,
    and the prompt/position updates share one of them.
    """
    rng = np.random.default_rng() if rng is None else rng
    n, J, K = X.shape
    X2 = X.reshape(n * J, K)
    P, H = _init_factors(X, rank, init, rng)
    norm_sq = _sq_norm(X)
    prev_err, n_iter = None, 0
    for n_iter in range(1, n_iter_max + 1):  # noqa: B007 (returned: the sweeps run)
        T = _mm_skinny(X2, H).reshape(n, J, rank)
        gram_h = H.T @ H
        A = _solve_gram((P.T @ P) * gram_h, (T * P).sum(1))
        gram_a = A.T @ A
        P = _solve_gram(gram_a * gram_h, (T * A[:, None, :]).sum(0))
        gram_p = P.T @ P
        mttkrp_h = ((A[:, None, :] * P).reshape(n * J, rank).T @ X2).T
        H = _solve_gram(gram_a * gram_p, mttkrp_h)
        if tol:
            inner = float((H * mttkrp_h).sum())
            model_sq = float((gram_a * gram_p * (H.T @ H)).sum())
            err = (max(norm_sq - 2 * inner + model_sq, 0.0) / max(norm_sq, _TINY)) ** 0.5
            if prev_err is not None and abs(prev_err - err) < tol:
                break
            prev_err = err
    return _project(X, P, H), P, H, n_iter


class CPFeatures(BaseEstimator, TransformerMixin):
    """Prompt-mode CP factors as features; fits on training prompts only.

    X is (n_prompts, n_positions, n_hidden), numpy or torch, with padded positions set to
    zero. For sklearn `Pipeline`/`cross_validate`, which need 2-D X, pass flattened rows
    (n_prompts, n_positions * n_hidden) and ``tensor_shape=(n_positions, n_hidden)``.

    Parameters: ``rank``; ``n_iter_max``, ``tol``, ``init`` ("svd" | "random") for CP-ALS;
    ``random_state`` seeds the random init and the projection; ``project_dim`` maps the hidden
    mode through a seeded Gaussian random matrix (hidden × project_dim, entries
    N(0, 1/project_dim)) before decomposing; ``normalize`` gives the position and hidden
    factors unit-norm columns (largest entry positive), folds scale and sign into the
    prompt mode and orders components by weight; ``device`` (None: the input tensor's device,
    cpu for numpy); ``dtype``.

    Fitted: ``position_factors_`` (positions × R), ``hidden_factors_`` (hidden × R, or
    project_dim × R), ``projection_`` (None or hidden × project_dim), ``weights_`` (CP weight
    of each component), ``train_factors_`` (training prompts × R), ``reconstruction_error_``
    (relative, of the tensor decomposed), ``n_iter_``.

    ``fit_transform`` returns ``train_factors_``: after the last sweep the prompt factors are
    re-solved against the final position/hidden factors, which is exactly ``transform(X)``.
    """

    def __init__(
        self,
        rank=8,
        n_iter_max=100,
        tol=1e-7,
        init="svd",
        random_state=0,
        project_dim=None,
        normalize=True,
        device=None,
        dtype="float32",
        tensor_shape=None,
    ):
        self.rank = rank
        self.n_iter_max = n_iter_max
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.project_dim = project_dim
        self.normalize = normalize
        self.device = device
        self.dtype = dtype
        self.tensor_shape = tensor_shape

    def _as_tensor(self, X) -> torch.Tensor:
        """X as a 3-D tensor of `dtype` on `device`."""
        device = self.device or (X.device if isinstance(X, torch.Tensor) else "cpu")
        X = torch.as_tensor(X, dtype=getattr(torch, self.dtype), device=device)
        if X.ndim == 2 and self.tensor_shape is not None:
            X = X.reshape(X.shape[0], *self.tensor_shape)
        if X.ndim != 3 or (self.tensor_shape and tuple(X.shape[1:]) != tuple(self.tensor_shape)):
            raise ValueError(
                f"expected X of shape (prompts, positions, hidden), or 2-D with "
                f"tensor_shape; got {tuple(X.shape)}, "
                f"tensor_shape={self.tensor_shape}"
            )
        return X

    def _project_hidden(self, X: torch.Tensor) -> torch.Tensor:
        """Apply the fitted random projection of the hidden mode, if any."""
        return (
            X
            if self.projection_ is None
            else X @ torch.as_tensor(self.projection_, dtype=X.dtype, device=X.device)
        )

    @torch.no_grad()
    def fit(self, X, y=None):
        """Decompose the training tensor; y is ignored."""
        rng = np.random.default_rng(self.random_state)
        X = self._as_tensor(X)
        self.projection_ = (
            None
            if self.project_dim is None
            else (
                rng.standard_normal((X.shape[2], self.project_dim)) / np.sqrt(self.project_dim)
            ).astype(self.dtype)
        )
        X = self._project_hidden(X)
        A, P, H, self.n_iter_ = cp_als(X, self.rank, self.n_iter_max, self.tol, self.init, rng)
        weights = A.norm(dim=0) * P.norm(dim=0) * H.norm(dim=0)
        if self.normalize:
            scale = [_unit_scale(P), _unit_scale(H)]
            P, H, A = P / scale[0], H / scale[1], A * (scale[0] * scale[1])
            order = torch.argsort(weights, descending=True)
            A, P, H, weights = A[:, order], P[:, order], H[:, order], weights[order]
        self.reconstruction_error_ = _relative_error(X, A, P, H)
        self.train_factors_, self.position_factors_, self.hidden_factors_, self.weights_ = (
            M.cpu().numpy() for M in (A, P, H, weights)
        )
        return self

    @torch.no_grad()
    def transform(self, X):
        """Least-squares prompt factors of X against the fitted position/hidden factors."""
        check_is_fitted(self, "position_factors_")
        X = self._as_tensor(X)
        fitted = (
            self.position_factors_.shape[0],
            self.hidden_factors_.shape[0]
            if self.projection_ is None
            else self.projection_.shape[0],
        )
        if tuple(X.shape[1:]) != fitted:
            raise ValueError(
                f"X has (positions, hidden) = {tuple(X.shape[1:])}; fitted on {fitted}"
            )
        X = self._project_hidden(X)
        P, H = (
            torch.as_tensor(M, dtype=X.dtype, device=X.device)
            for M in (self.position_factors_, self.hidden_factors_)
        )
        return _project(X, P, H).cpu().numpy()

    def fit_transform(self, X, y=None):
        """Fit, then return the training prompt factors (equal to ``transform(X)``)."""
        return self.fit(X, y).train_factors_.copy()
