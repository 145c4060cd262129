"""Run prompt sets through a model and reduce each batch, on the device, into per-cell moments.

Prompts are tokenized once, sorted by length into batches (bucketing keeps padding
small), and run through the model's backbone with hooks at each layer. A hook turns
the layer's hidden states into statistics immediately, so no step holds more than one
layer's states of one batch; the values are folded into float64 moments per
(stat, layer, position) cell and into small per-prompt means (prompt × layer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.models.tokens import Batching, Tokenization, encode, pad_batch, plan_batches
from jbtrace.prompts import PromptSet
from jbtrace.trace import capture, hooks, stats
from jbtrace.trace.accumulate import Moments

log = logging.getLogger(__name__)

ALIGNMENTS = ("start", "end", "relative")


@dataclass(frozen=True)
class ExtractOptions(Tokenization, Batching):
    """What to measure, where, and how prompts are tokenized and batched."""

    stats: tuple[str, ...] = (stats.DEFAULT,)
    align: str = "start"
    bins: int = 16
    shard: tuple[int, int] = (0, 1)  # (k, n): only prompts whose index is k modulo n

    def __post_init__(self):
        stats.get(self.stats)
        if self.align not in ALIGNMENTS:
            raise UserError(
                f"unknown alignment {self.align!r}: choose one of {', '.join(ALIGNMENTS)}"
            )
        Tokenization.__post_init__(self)
        if self.bins < 1:
            raise UserError("--bins must be at least 1")
        Batching.__post_init__(self)
        k, n = self.shard
        if not 0 <= k < n:
            raise UserError(f"bad shard {k}/{n}: need 0 <= K < N")


@dataclass
class ScenarioTrace:
    """What one prompt set left in one model."""

    moments: Moments  # cells: stat × layer × position
    prompt_index: np.ndarray  # (prompt,) index in the prompt set (differs from 0..n-1 when sharded)
    prompt_values: np.ndarray  # (stat, layer, prompt): mean over the prompt's tokens
    prompt_slope: (
        np.ndarray
    )  # (stat, layer, prompt): least-squares slope of the prompt's values on position
    prompt_tokens: np.ndarray  # (prompt,) real tokens after truncation
    truncated: np.ndarray  # (prompt,) bool


@dataclass
class ModelTrace:
    """Everything extraction measured for one model, ready for the store."""

    model: LoadedModel
    options: ExtractOptions
    n_positions: int
    scenarios: dict[str, ScenarioTrace] = field(default_factory=dict)
    tokens_processed: int = 0
    tokens_padded: int = 0

    @property
    def padding_waste(self) -> float:
        return self.tokens_padded / max(self.tokens_processed, 1)


def positions(mask: torch.Tensor, align: str, n_positions: int) -> torch.Tensor:
    """Position index of each real token (B, T): start, end or relative bins; padding gives -1."""
    rank = mask.long().cumsum(-1) - 1
    length = mask.long().sum(-1, keepdim=True)
    if align == "start":
        pos = rank
    elif align == "end":
        pos = length - 1 - rank
    else:
        pos = torch.div(rank * n_positions, length.clamp(min=1), rounding_mode="floor").clamp(
            max=n_positions - 1
        )
    return torch.where(mask.bool(), pos, -1)


def prompt_means(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(stat, layer, B): each prompt's mean over its kept tokens.

    NaN if none, not finite if any of them is not.
    """
    sums = torch.where(keep, values.double(), 0.0).sum(-1)
    counts = keep.sum(-1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("nan"))


def prompt_slopes(values: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(stat, layer, B): least-squares slope of each prompt's values on its positions.

    The slope is per position.

    NaN where the prompt has fewer than two distinct positions, or a value that is not finite,
    so that a prompt with an overflow is excluded, never half-counted.
    """
    w = keep.double()
    n = w.sum(-1, keepdim=True).clamp(min=1)
    x = pos.double()[None, None] * w
    y = torch.where(keep, values.double(), 0.0)
    dx = (x - x.sum(-1, keepdim=True) / n) * w
    sxx, sxy = (dx**2).sum(-1), (dx * y).sum(-1)
    return torch.where(sxx > 0, sxy / sxx, float("nan"))


def bin_means(
    values: torch.Tensor, pos: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative alignment: one value per (prompt, bin).

    The value is the prompt's mean over its tokens in the bin.

    values (stat, layer, B, T), pos (B, T) bin per token (-1 padding). Returns values
    (stat, layer, B, n_bins) and positions (B, n_bins), -1 where a prompt has no token in a bin.
    """
    batch = pos.shape[0]
    real = pos >= 0
    slot = (torch.arange(batch, device=pos.device)[:, None] * n_bins + pos)[real]
    flat = values.double()[..., real]  # (stat, layer, real tokens)
    sums = torch.zeros(
        *flat.shape[:2], batch * n_bins, dtype=torch.float64, device=pos.device
    ).index_add_(-1, slot, flat)
    counts = torch.zeros(batch * n_bins, dtype=torch.float64, device=pos.device).index_add_(
        0, slot, torch.ones_like(slot, dtype=torch.float64)
    )
    means = (sums / counts.clamp(min=1)).view(*flat.shape[:2], batch, n_bins)
    bins = torch.arange(n_bins, device=pos.device).expand(batch, n_bins)
    return means, torch.where(counts.view(batch, n_bins) > 0, bins, -1)


class _Reducer:
    """Hook callback: each layer's hidden states into statistic values.

    Only (B, T) tensors are kept.
    """

    def __init__(self, statistics: list[stats.Statistic], n_layers: int):
        self.statistics = list(statistics)
        self.n_layers = n_layers
        self.values: torch.Tensor | None = None
        self.prev: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = (
            None  # (B, T) real tokens of the batch, for attention statistics
        )

    def _buffer(self, like: torch.Tensor, batch_tokens) -> torch.Tensor:
        if self.values is None:
            n_stats = len(self.statistics)
            self.values = torch.full(
                (n_stats, self.n_layers, *batch_tokens),
                float("nan"),
                dtype=like.dtype,
                device=like.device,
            )
        return self.values

    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        h = hidden if hidden.dtype == torch.float64 else hidden.float()
        self._buffer(h, h.shape[:2])
        for s, stat in enumerate(self.statistics):
            if stat.source != "hidden":
                continue
            if not stat.needs_prev:
                self.values[s, layer] = stat.fn(h)
            elif self.prev is not None:
                self.values[s, layer] = stat.fn(h, self.prev)
        self.prev = h

    def attention(self, layer: int, probs: torch.Tensor) -> None:
        """Capture callback: one layer's attention probabilities (B, heads, T, T).

        They become attention statistics.
        """
        values = self._buffer(probs, (probs.shape[0], probs.shape[2]))
        for s, stat in enumerate(self.statistics):
            if stat.source == "attention":
                values[s, layer] = stat.fn(probs, self.key_mask)

    def take(self) -> torch.Tensor:
        values, self.values, self.prev = self.values, None, None
        return values


def extract(
    lm: LoadedModel,
    prompt_sets: list[PromptSet],
    options: ExtractOptions = ExtractOptions(),
    progress: Callable[[int], None] | None = None,
    checkpoint=None,
) -> ModelTrace:
    """Fold every prompt of every set through ``lm`` into per-cell moments.

    ``checkpoint`` (a ``checkpoint.ExtractCheckpoint``) restores each set's saved state
    before its first batch and saves it after batches, so an interrupted run resumes.
    """
    statistics = stats.get(options.stats)
    options = options.resolve(lm)
    n_positions = options.bins if options.align == "relative" else options.limit(lm)
    trace = ModelTrace(model=lm, options=options, n_positions=n_positions)
    reducer = _Reducer(statistics, lm.n_layers)
    points = surgery.hidden_state_points(lm.model)
    attention = (
        surgery.attention_layers(lm.model)
        if any(s.source == "attention" for s in statistics)
        else {}
    )
    with (
        surgery.hooked(points, reducer),
        capture.probabilities_hooked(lm.model, attention, reducer.attention),
        torch.inference_mode(),
    ):
        for prompt_set in prompt_sets:
            trace.scenarios[prompt_set.name] = _extract_set(
                lm, prompt_set, options, trace, reducer, progress, checkpoint
            )
    return trace


def _extract_set(
    lm, prompt_set, options, trace, reducer, progress, checkpoint=None
) -> ScenarioTrace:
    n_stats, n_layers, n_pos = len(reducer.statistics), lm.n_layers, trace.n_positions
    device = lm.device
    k, n = options.shard
    index = np.arange(k, len(prompt_set.texts), n)
    ids, truncated = encode(lm, [prompt_set.texts[i] for i in index], options)
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        raise UserError(
            f"{prompt_set.name}: {int((lengths == 0).sum())} prompts have no tokens for {lm.name}"
        )
    moments = Moments(n_stats * n_layers * n_pos, device=device)
    prompt_values = np.full((n_stats, n_layers, len(ids)), np.nan)
    prompt_slope = np.full((n_stats, n_layers, len(ids)), np.nan)
    backbone = surgery.backbone(lm.model)
    pad_id = lm.tokenizer.pad_token_id
    cell_base = (torch.arange(n_stats * n_layers, device=device) * n_pos).view(
        n_stats, n_layers, 1, 1
    )
    has_layer = torch.ones(n_stats, n_layers, dtype=torch.bool, device=device)
    attention_layers = surgery.attention_layers(
        lm.model
    )  # once: each call walks every module of the model
    with_attention = torch.tensor(
        [layer in attention_layers for layer in range(n_layers)], device=device
    )
    for s, stat in enumerate(reducer.statistics):
        has_layer[s, 0] = not stat.needs_prev
        if (
            stat.source == "attention"
        ):  # layer l >= 1: the attention of block l; none at layer 0 or in Mamba2
            has_layer[s] = with_attention
    batches, key = plan_batches(lengths, options), f"{lm.name}/{prompt_set.name}"
    per_prompt = {
        "prompt_values": prompt_values,
        "prompt_slope": prompt_slope,
    }  # checkpointed with the moments
    done = checkpoint.restore(key, moments, per_prompt, trace) if checkpoint else 0
    if progress and done:
        progress(sum(len(b) for b in batches[:done]))
    for number, batch in enumerate(batches[done:], start=done + 1):
        input_ids, mask = pad_batch(ids, lengths, batch, pad_id, options.padding_side, device)
        reducer.key_mask = mask.bool()
        backbone(**surgery.forward_kwargs(lm.model, input_ids, mask))
        values = reducer.take()  # (stat, layer, B, T)
        pos = positions(mask, options.align, n_pos)
        keep = (pos >= 0)[None, None] & has_layer[:, :, None, None]
        prompt_values[:, :, batch] = prompt_means(values, keep).cpu().numpy()
        if (
            options.align == "relative"
        ):  # one value per (prompt, bin): counts are prompts, not tokens
            values, pos = bin_means(values, pos, n_pos)
            keep = (pos >= 0)[None, None] & has_layer[:, :, None, None]
        prompt_slope[:, :, batch] = prompt_slopes(values, pos, keep).cpu().numpy()
        cells = cell_base + pos[None, None]
        moments.add(values[keep], cells[keep])
        trace.tokens_processed += mask.numel()
        trace.tokens_padded += int(mask.numel() - mask.sum())
        hooks.reached("batch")  # tests kill the process here (see hooks)
        if checkpoint:
            checkpoint.step(key, number, len(batches), moments, per_prompt, trace)
        if progress:
            progress(len(batch))
    return ScenarioTrace(moments, index, prompt_values, prompt_slope, lengths, truncated)
