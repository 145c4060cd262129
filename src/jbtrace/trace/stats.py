"""Registry of per-(layer, position) statistics, computed on the device from one batch.

A hidden-state statistic maps the hidden states of one layer, shape
(batch, tokens, hidden), to one value per token, shape (batch, tokens). It may also
use the previous layer's states (``needs_prev``); it then has no value at layer 0.
An attention statistic maps one layer's attention probabilities
(batch, heads, query, key) and the key mask (batch, key) to one value per query token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jbtrace.errors import UserError


@dataclass(frozen=True)
class Statistic:
    name: str
    description: str
    fn: Callable[..., torch.Tensor]
    source: str = "hidden"  # "hidden" or "attention"
    needs_prev: bool = False


REGISTRY: dict[str, Statistic] = {}
DEFAULT = "log_norm"


def register(stat: Statistic) -> Statistic:
    REGISTRY[stat.name] = stat
    return stat


def get(names: list[str] | tuple[str, ...] | str) -> list[Statistic]:
    """Look statistics up by name; unknown names are a user error."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(
            f"unknown statistic {', '.join(unknown)}: choose from {', '.join(REGISTRY)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"statistic given twice: {', '.join(names)}")
    return [REGISTRY[n] for n in names]


def _norm(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(h, dim=-1)


for _stat in (
    Statistic(
        "log_norm", "natural log of the L2 norm of the hidden state", lambda h: torch.log(_norm(h))
    ),
    Statistic("norm", "L2 norm of the hidden state", _norm),
    Statistic("mean", "mean of the hidden state's coordinates", lambda h: h.mean(dim=-1)),
    Statistic(
        "rms",
        "root mean square of the hidden state's coordinates",
        lambda h: h.pow(2).mean(dim=-1).sqrt(),
    ),
    Statistic(
        "max_abs", "largest absolute coordinate of the hidden state", lambda h: h.abs().amax(dim=-1)
    ),
    Statistic(
        "cos_prev",
        "cosine similarity with the same token's hidden state at the previous layer"
        " (none at layer 0)",
        lambda h, prev: F.cosine_similarity(h, prev, dim=-1, eps=1e-12),
        needs_prev=True,
    ),
):
    register(_stat)


def _attn_entropy(probs: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention row over keys, averaged over heads."""
    return -torch.special.xlogy(probs, probs).sum(-1).mean(1)


def _attn_sink(probs: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Share of each query's attention on the prompt's first real token, averaged over heads."""
    first = key_mask.long().argmax(-1)  # first real token of each row (left padding moves it)
    index = first.view(-1, 1, 1, 1).expand(*probs.shape[:3], 1)
    return probs.gather(-1, index).squeeze(-1).mean(1)


for _stat in (
    Statistic(
        "attn_entropy",
        "entropy (nats) of the query token's attention over keys, mean over heads",
        _attn_entropy,
        source="attention",
    ),
    Statistic(
        "attn_sink",
        "share of the query token's attention on the first real token, mean over heads",
        _attn_sink,
        source="attention",
    ),
):
    register(_stat)
