"""Exact, mergeable per-cell moments: count, mean and M2 in float64 (Chan et al. pairwise update).

A batch's values are reduced per cell on their own device (scatter-add), then folded
into the running totals, so no step keeps more than one batch of values.
"""

from __future__ import annotations

import torch


class Moments:
    """count / mean / M2 for a fixed number of cells, plus a count of non-finite values."""

    def __init__(self, n_cells: int, device: torch.device | str = "cpu"):
        self.count = torch.zeros(n_cells, dtype=torch.float64, device=device)
        self.mean = torch.zeros(n_cells, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n_cells, dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros(n_cells, dtype=torch.int64, device=device)

    def add(self, values: torch.Tensor, cells: torch.Tensor) -> None:
        """Fold values (any float dtype) into cells (same shape, int64 cell indices)."""
        values, cells = values.reshape(-1).to(torch.float64), cells.reshape(-1)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            self.nonfinite.index_add_(0, cells[~finite], torch.ones_like(cells[~finite]))
            values, cells = values[finite], cells[finite]
        n = torch.zeros_like(self.count).index_add_(0, cells, torch.ones_like(values))
        total = torch.zeros_like(self.mean).index_add_(0, cells, values)
        mean = torch.where(n > 0, total / n.clamp(min=1), 0.0)
        m2 = torch.zeros_like(self.m2).index_add_(0, cells, (values - mean[cells]) ** 2)
        self._merge(n, mean, m2)

    def merge(self, other: Moments) -> None:
        self._merge(
            other.count.to(self.count.device),
            other.mean.to(self.count.device),
            other.m2.to(self.count.device),
        )
        self.nonfinite += other.nonfinite.to(self.nonfinite.device)

    def _merge(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a = self.count
        n = n_a + n_b
        safe = n.clamp(min=1)
        delta = mean_b - self.mean
        self.mean = torch.where(n > 0, self.mean + delta * n_b / safe, self.mean)
        self.m2 = self.m2 + m2_b + delta**2 * n_a * n_b / safe
        self.count = n

    def variance(self) -> torch.Tensor:
        """Sample variance (ddof=1); NaN where fewer than two values."""
        return torch.where(self.count > 1, self.m2 / (self.count - 1).clamp(min=1), float("nan"))
