"""Capture the attention probabilities of chosen layers during a forward pass, one layer at a time.

transformers 5 attention modules look their attention function up by name
(``config._attn_implementation``) in ``ALL_ATTENTION_FUNCTIONS`` and hand it the
queries and keys after rotary embedding, already split into heads. jbtrace registers
one more function there. Inside ``probabilities_hooked`` only the captured modules
get a copy of the config naming it; the function runs the model's own kernel (sdpa,
...) for the output, unchanged, and computes softmax(QKᵀ·scale + mask) for those
modules only, as eager attention does. Models loaded with eager attention already
return the probabilities; a forward hook reads them. Either way the callback gets
``(layer, probs)`` with probs of shape (batch, heads, query, key), one layer at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from jbtrace.errors import UserError
from jbtrace.models import surgery

NAME = "jbtrace_capture"
_TARGET = "_jbtrace_capture"  # attribute on a captured module: (layer, callback, delegate name)


def probabilities(
    module, query, key, attention_mask, scaling=None, is_causal=None, position_bias=None
) -> torch.Tensor:
    """softmax(QKᵀ·scale + mask) over keys, as transformers' eager attention computes it
    (float32 or float64)."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    n_rep = query.shape[1] // key.shape[1]  # grouped-query attention shares each key head
    key = key.repeat_interleave(n_rep, dim=1) if n_rep > 1 else key
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * scale
    if position_bias is not None:
        scores = scores + position_bias.to(dtype)
    q_len, k_len = scores.shape[-2:]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if (
        attention_mask is not None and attention_mask.ndim == 2
    ):  # (batch, key) padding mask, flash-style
        allowed = attention_mask.bool()[:, None, None, :]
        if causal and q_len > 1:
            allowed = allowed & torch.ones(
                q_len, k_len, dtype=torch.bool, device=scores.device
            ).tril(k_len - q_len)
        attention_mask = allowed
    elif attention_mask is None and causal and q_len > 1:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(
            k_len - q_len
        )
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(dtype).min)
        else:
            scores = scores + attention_mask.to(dtype)
    return torch.softmax(scores, dim=-1)


def _capture_forward(module, query, key, value, attention_mask, *args, **kwargs):
    layer, callback, delegate = getattr(module, _TARGET)
    result = ALL_ATTENTION_FUNCTIONS[delegate](
        module, query, key, value, attention_mask, *args, **kwargs
    )
    scaling = kwargs.get("scaling", args[1] if len(args) > 1 else None)
    callback(
        layer,
        probabilities(
            module,
            query,
            key,
            attention_mask,
            scaling,
            kwargs.get("is_causal"),
            kwargs.get("position_bias"),
        ),
    )
    return result


AttentionInterface.register(NAME, _capture_forward)


@contextmanager
def probabilities_hooked(
    model: torch.nn.Module, layers: Iterable[int], callback: Callable[[int, torch.Tensor], None]
):
    """Call ``callback(layer, probs)`` for each chosen layer's attention in every forward pass
    inside the block."""
    available = surgery.attention_layers(model)
    layers = sorted(set(layers))
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise UserError(
            f"layer {', '.join(map(str, missing))} has no attention (attention layers: "
            f"{_span(sorted(available))})"
        )
    patched, handles = [], []
    try:
        for layer in layers:
            module = available[layer]
            config = getattr(module, "config", None)
            implementation = getattr(config, "_attn_implementation", None)
            if implementation == "eager":
                handles.append(module.register_forward_hook(_eager_hook(layer, callback)))
                continue
            if implementation not in ALL_ATTENTION_FUNCTIONS:
                raise UserError(
                    f"cannot capture attention of {type(module).__name__} (implementation "
                    f"{implementation!r}); load the model with eager attention"
                )
            own = copy.copy(config)
            own._attn_implementation_internal = (
                NAME  # this module only; sub-configs stay as they are
            )
            setattr(module, _TARGET, (layer, callback, implementation))
            module.config = own
            patched.append((module, config))
        yield
    finally:
        for module, config in patched:
            module.config = config
            delattr(module, _TARGET)
        for handle in handles:
            handle.remove()


def _eager_hook(layer, callback):
    def hook(module, args, output):
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if weights is None:
            raise UserError(
                f"{type(module).__name__} returned no attention weights under eager attention"
            )
        callback(layer, weights)

    return hook


def _span(values: list[int]) -> str:
    if not values:
        return "none"
    return (
        f"{values[0]}..{values[-1]}"
        if values == list(range(values[0], values[-1] + 1))
        else ", ".join(map(str, values))
    )
