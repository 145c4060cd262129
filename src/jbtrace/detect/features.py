"""Per-layer prompt features for detectors, captured a few layers per pass over the prompts.

A *source* is where a layer is read: ``resid`` (the residual stream, the store's layer
index), ``attn_out`` / ``mlp_out`` (what the attention / MLP sub-layer of block l adds) or
``mixer`` (Mamba2's mixer of block l). A *kind* is how a prompt's (tokens × hidden) states
become features: ``cp`` keeps the first ``cp_positions`` token positions (start-aligned,
zeros after the prompt's end) as a (positions × hidden) slice of the tensor that CP
decomposes; ``last`` is the last real token's state; ``mean`` the mean over real tokens.
Only the requested layers' hooks are active, and a forward pass stops as soon as the
deepest of them has fired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.models.tokens import Batching, Tokenization, encode, pad_batch, plan_batches

log = logging.getLogger(__name__)

SOURCES = ("resid", "attn_out", "mlp_out", "mixer")
KINDS = ("cp", "last", "mean")
BYTES = 4  # features are kept in float32


@dataclass
class Encoded:
    """Token ids of a list of prompts, as the model will see them."""

    ids: list[list[int]]
    lengths: np.ndarray  # real tokens after truncation
    full_lengths: np.ndarray  # tokens before truncation (what a length-only baseline may use)
    truncated: np.ndarray


def tokenize(
    lm: LoadedModel,
    texts: list[str] | tuple[str, ...],
    max_tokens: int,
    chat_template: bool | None = False,
) -> Encoded:
    """Tokenize once (chat template if asked; None: where the tokenizer has one); untruncated
    lengths kept for the baseline."""
    ids, truncated = encode(lm, texts, Tokenization(max_tokens, chat_template))
    full = np.array(
        [len(x) for x in lm.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    )
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        raise UserError(f"{int((lengths == 0).sum())} prompts have no tokens for {lm.name}")
    return Encoded(ids, lengths, np.maximum(full, lengths), truncated)


def points(lm: LoadedModel, source: str) -> list[tuple[torch.nn.Module, str] | None]:
    """Hook point of each layer index for ``source`` (None where the model has no such layer)."""
    if source == "resid":
        return list(surgery.hidden_state_points(lm.model))
    if source not in SOURCES:
        raise UserError(f"unknown feature source {source!r}: choose one of {', '.join(SOURCES)}")
    found = surgery.sublayer_points(lm.model, source)
    if all(p is None for p in found):
        raise UserError(
            f"{lm.name} has no {source} sub-layer (model type {lm.model.config.model_type})"
        )
    return found


def hidden_size(lm: LoadedModel) -> int:
    return int(lm.model.config.hidden_size)


def plan_passes(
    requests: list[tuple[str, int]], bytes_per_request: int, budget: int
) -> list[list[tuple[str, int]]]:
    """Group (source, layer) requests, shallowest first, into passes that each fit ``budget``
    bytes."""
    passes, current = [], []
    for request in sorted(requests, key=lambda r: (r[1], r[0])):
        if current and (len(current) + 1) * bytes_per_request > budget:
            passes.append(current)
            current = []
        current.append(request)
    return passes + ([current] if current else [])


def request_bytes(
    n_prompts: int, hidden: int, kinds: tuple[str, ...], cp_positions: int, cp_dim: int | None
) -> int:
    """Memory the features of one (source, layer) take for ``n_prompts`` prompts."""
    per_prompt = sum(hidden for k in kinds if k != "cp")
    if "cp" in kinds:
        per_prompt += cp_positions * (cp_dim or hidden)
    return n_prompts * per_prompt * BYTES


class _Stop(Exception):
    """Raised by the last hook of a forward pass: deeper blocks are not needed."""


def projection(hidden: int, dim: int | None, seed: int) -> np.ndarray | None:
    """Seeded Gaussian random projection of the hidden mode (hidden × dim, entries N(0, 1/dim))."""
    if dim is None:
        return None
    if dim < 1:
        raise UserError("--project-dim must be at least 1")
    return (np.random.default_rng(seed).standard_normal((hidden, dim)) / np.sqrt(dim)).astype(
        np.float32
    )


def capture(
    lm: LoadedModel,
    encoded: Encoded,
    requests: list[tuple[str, int]],
    kinds: tuple[str, ...],
    cp_positions: int = 64,
    cp_projection: np.ndarray | None = None,
    batch_size: int = 8,
    max_batch_tokens: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """One pass over the prompts with hooks on ``requests``; float32 features per request and kind.

    ``cp``: (prompts, cp_positions, hidden or projected dim); ``last``, ``mean``: (prompts, hidden).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise UserError(
            f"unknown feature kind {sorted(unknown)[0]!r}: choose from {', '.join(KINDS)}"
        )
    hook_points = []
    for source, layer in requests:
        point = points(lm, source)[layer]
        if point is None:
            raise UserError(f"{lm.name}: no {source} at layer {layer}")
        hook_points.append(point)
    n, device = len(encoded.ids), lm.device
    proj = None if cp_projection is None else torch.as_tensor(cp_projection, device=device)
    out: dict[tuple[str, int], dict[str, np.ndarray]] = {r: {} for r in requests}
    state: dict = {}

    def hook(index: int, hidden: torch.Tensor) -> None:
        h = hidden.float() * state["mask"][..., None]
        rows, lengths = state["rows"], state["lengths"]
        feats = out[requests[index]]
        if "cp" in kinds:
            cp = h[:, :cp_positions]
            cp = cp if proj is None else cp @ proj
            arr = feats.setdefault("cp", np.zeros((n, cp_positions, cp.shape[-1]), np.float32))
            arr[rows, : cp.shape[1]] = cp.cpu().numpy()
        if "last" in kinds:
            last = h[torch.arange(len(rows), device=h.device), lengths - 1]
            feats.setdefault("last", np.zeros((n, h.shape[-1]), np.float32))[rows] = (
                last.cpu().numpy()
            )
        if "mean" in kinds:
            mean = h.sum(1) / lengths[:, None]
            feats.setdefault("mean", np.zeros((n, h.shape[-1]), np.float32))[rows] = (
                mean.cpu().numpy()
            )
        state["fired"] += 1
        if state["fired"] == len(requests):
            raise _Stop

    backbone = surgery.backbone(lm.model)
    pad_id = lm.tokenizer.pad_token_id
    batching = Batching(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    with surgery.hooked(hook_points, hook), torch.inference_mode():
        for batch in plan_batches(encoded.lengths, batching):
            # right padding: real tokens at positions 0..length-1
            input_ids, mask = pad_batch(
                encoded.ids, encoded.lengths, batch, pad_id, "right", device
            )
            state.update(rows=batch, lengths=mask.sum(-1), mask=mask.float(), fired=0)
            try:
                backbone(**surgery.forward_kwargs(lm.model, input_ids, mask))
            except _Stop:
                pass
            if progress:
                progress(len(batch))
    return out
