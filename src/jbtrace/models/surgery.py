"""Where each architecture keeps its parts, and temporary changes to a model.

This is the one module that knows architectures: where the block list, the
embedding output, the final norm, the attention modules and the sub-layers live,
and how transformers' ``hidden_states`` map onto jbtrace's layer index
(0 = embedding output, l = output of block l, the last layer as transformers
reports it, i.e. after the final norm where the family has one). Nothing else in
jbtrace writes ``model.model.layers``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

from jbtrace.errors import UserError

# Attribute names of the final norm, by family (GPT-J, Llama/Mistral, Mamba2, OPT/Falcon-like).
_FINAL_NORMS = ("ln_f", "norm", "norm_f", "final_layernorm", "final_layer_norm")


def backbone(model: nn.Module) -> nn.Module:
    """The base model without the LM head (``model.model``, ``model.transformer``, ...)."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer / mixer blocks, in order."""
    n = num_blocks(model.config)
    lists = [m for m in backbone(model).modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise UserError(
            f"cannot find the {n} blocks of {type(model).__name__}: architecture not supported"
        )
    return lists[0]


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block, if the family has one."""
    base = backbone(model)
    for name in _FINAL_NORMS:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def attention_modules(model: nn.Module) -> list[nn.Module | None]:
    """The self-attention module of each block (None for blocks without attention)."""
    found = []
    for block in blocks(model):
        module = None
        for path in ("self_attn", "attn", "attention.self", "attention"):
            module = _get_path(block, path)
            if module is not None:
                break
        found.append(module)
    return found


def attention_layers(model: nn.Module) -> dict[int, nn.Module]:
    """Layer index l (>= 1) → the attention module of the block whose output is layer l."""
    return {layer: m for layer, m in enumerate(attention_modules(model), start=1) if m is not None}


def hidden_state_points(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where each layer index is read: (module, "input" or "output"), one entry per layer."""
    chain = blocks(model)
    last = final_norm(model) or chain[-1]
    return [(chain[0], "input")] + [(block, "output") for block in chain[:-1]] + [(last, "output")]


# What each block adds to the residual stream, by kind: paths inside a block, first match wins
# (GPT-J attn/mlp, Llama/Mistral self_attn/mlp, BERT attention.output.dense/output.dense before
# their residual add and LayerNorm, Mamba2 mixer).
SUBLAYERS = {
    "attn_out": ("self_attn", "attn", "attention.output.dense"),
    "mlp_out": ("mlp", "feed_forward", "output.dense"),
    "mixer": ("mixer",),
}


def sublayer_points(model: nn.Module, kind: str) -> list[tuple[nn.Module, str] | None]:
    """Where sub-layer ``kind`` of block l is read, at layer index l (None: layer 0, or a block
    without it)."""
    if kind not in SUBLAYERS:
        raise UserError(f"unknown sub-layer {kind!r}: choose one of {', '.join(SUBLAYERS)}")
    found = []
    for block in blocks(model):
        module = next(
            (m for m in (_get_path(block, p) for p in SUBLAYERS[kind]) if m is not None), None
        )
        found.append(None if module is None else (module, "output"))
    return [None] + found


@contextmanager
def hooked(points: list[tuple[nn.Module, str]], callback):
    """Call ``callback(index, tensor)`` with each point's hidden states; hooks are removed on
    exit."""

    def first_tensor(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    def make(index, where):
        if where == "input":
            return lambda module, args, kwargs: callback(
                index, first_tensor(args) if args else kwargs["hidden_states"]
            )
        return lambda module, args, output: callback(index, first_tensor(output))

    handles = []
    try:
        for index, (module, where) in enumerate(points):
            if where == "input":
                handles.append(
                    module.register_forward_pre_hook(make(index, where), with_kwargs=True)
                )
            else:
                handles.append(module.register_forward_hook(make(index, where)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@cache
def _forward_parameters(cls: type) -> frozenset[str]:
    """Argument names of a module class's forward (looked up once, not once per batch)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def forward_kwargs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Arguments for the backbone's forward: masks, and position ids that skip padding where
    accepted."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    params = _forward_parameters(type(backbone(model)))
    if "position_ids" in params:
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def num_blocks(config) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"model config {type(config).__name__} has no layer count")


def layer_map_text(model: nn.Module) -> str:
    norm = final_norm(model)
    last = "output of the final norm" if norm is not None else "output of the last block"
    return (
        "layer 0: input of block 0 (embedding output); layer l in 1..L-1: output of block l; "
        f"layer L: {last} (as transformers' hidden_states[-1])"
    )


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _block_owner(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the block list, and the attribute name it is held under."""
    chain = blocks(model)
    for parent in backbone(model).modules():
        for name, child in parent.named_children():
            if child is chain:
                return parent, name
    raise UserError(f"cannot find where {type(model).__name__} keeps its blocks")


def check_bypass(model: nn.Module, layers) -> tuple[int, ...]:
    """Sorted unique layer indices to bypass; each must name a block (1..L)."""
    n = num_blocks(model.config)
    layers = tuple(sorted(set(int(x) for x in layers)))
    bad = [x for x in layers if not 1 <= x <= n]
    if bad:
        raise UserError(
            f"cannot bypass layer {bad[0]}: bypassing layer l skips block l, and this model has "
            f"blocks 1..{n} (layer 0 is the embedding output, not a block)"
        )
    if len(layers) == n:
        raise UserError(f"cannot bypass all {n} blocks")
    return layers


@contextmanager
def bypass(model: nn.Module, layers):
    """Skip blocks ``layers`` (store convention: layer l is block l, 1..L) for the duration of
    the context.

    A skipped block's output is its input: the residual stream passes unchanged. The kept
    blocks are put in a shorter block list with their layer indices renumbered and the config's
    layer count (and per-layer types, if any) cut to match, so the model is, while inside, the
    same as one built without those blocks: transformers' caches (DynamicCache, which indexes its
    entries by each attention's ``layer_idx`` and reads the sequence length from entry 0) hold
    exactly one entry per kept block and stay consistent during generation. Everything is
    restored on exit, also after an exception.
    """
    layers = check_bypass(model, layers)
    if not layers:
        yield model
        return
    owner, name = _block_owner(model)
    chain = getattr(owner, name)
    config = model.config
    kept = [block for i, block in enumerate(chain, start=1) if i not in layers]
    indexed = [
        (m, m.layer_idx, new)
        for new, block in enumerate(kept)
        for m in block.modules()
        if isinstance(getattr(m, "layer_idx", None), int)
    ]
    saved = {
        key: getattr(config, key)
        for key in ("num_hidden_layers", "layer_types")
        if hasattr(config, key)
    }
    try:
        setattr(owner, name, nn.ModuleList(kept))
        for module, _, new in indexed:
            module.layer_idx = new
        config.num_hidden_layers = len(kept)
        if isinstance(saved.get("layer_types"), (list, tuple)):
            config.layer_types = [
                t for i, t in enumerate(saved["layer_types"], start=1) if i not in layers
            ]
        yield model
    finally:
        setattr(owner, name, chain)
        for module, old, _ in indexed:
            module.layer_idx = old
        for key, value in saved.items():
            setattr(config, key, value)


@contextmanager
def steer(model: nn.Module, layer: int, vector: torch.Tensor):
    """Add ``vector`` to the residual stream after block ``layer`` (1..L), at every position, for
    the duration of the context (activation addition); the hook is removed on exit, also after
    an exception. With a KV cache, each new token's state is steered as it is computed, so the
    cached keys and values are those of the steered stream.
    """
    n = num_blocks(model.config)
    if not 1 <= layer <= n:
        raise UserError(f"cannot steer at layer {layer}: steering adds to block 1..{n}'s output")

    def add(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0]), *output[1:])
        return output + vector.to(output)

    handle = blocks(model)[layer - 1].register_forward_hook(add)
    try:
        yield model
    finally:
        handle.remove()
