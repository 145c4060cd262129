"""The difference-of-means direction as a one-dimensional detector (the "refusal direction" of
Arditi et al. 2024, read here at the prompt): the unit vector from the benign mean to the
jailbreak mean of the training prompts, and each prompt's projection onto it."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class DiffMeans(TransformerMixin, BaseEstimator):
    """Projection onto the normalised difference of class means, fitted on the training prompts
    only (``direction_``); transform gives one column."""

    def fit(self, X, y):
        X, y = np.asarray(X, float), np.asarray(y)
        direction = X[y == 1].mean(0) - X[y == 0].mean(0)
        norm = np.linalg.norm(direction)
        self.direction_ = direction / norm if norm > 0 else direction
        return self

    def transform(self, X):
        return (np.asarray(X, float) @ self.direction_)[:, None]
