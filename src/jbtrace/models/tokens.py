"""Tokenization: how prompts become token ids, and how ids are batched and padded.

One ``Tokenization`` value (max tokens, chat template, padding side) is built once per command
and passed down to every stage that tokenizes (trace, detect, defend); ``Batching`` says how the
ids are grouped into forward passes. The chat template has one resolver, ``Tokenization.resolve``:
``None`` (the default) means on exactly when the model's tokenizer has a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from jbtrace.errors import UserError
from jbtrace.models.load import LoadedModel

MAX_TOKENS = 512  # the one default prompt length, in tokens (counted after truncation)


def _at_least_one(options, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass(frozen=True)
class Tokenization:
    """Prompt length cap, chat template (None: on where the tokenizer has one), padding side."""

    max_tokens: int = MAX_TOKENS
    chat_template: bool | None = None
    padding_side: str = "right"

    def __post_init__(self):
        if self.padding_side not in ("left", "right"):
            raise UserError(f"unknown padding side {self.padding_side!r}: choose left or right")
        _at_least_one(self, ("max_tokens",))

    def resolve(self, lm: LoadedModel):
        """This value with ``chat_template`` decided for ``lm``: as asked, else whether its
        tokenizer has one; forced on for a tokenizer without one is a UserError."""
        has = bool(getattr(lm.tokenizer, "chat_template", None))
        if self.chat_template and not has:
            raise UserError(f"{lm.name}: its tokenizer has no chat template; drop --chat-template")
        return self if self.chat_template is not None else replace(self, chat_template=has)

    def limit(self, lm: LoadedModel) -> int:
        """Tokens a prompt may keep in ``lm``: max_tokens, capped by the model's positions."""
        return min(self.max_tokens, lm.max_positions or self.max_tokens)


@dataclass(frozen=True)
class Batching:
    """How token ids are grouped into forward passes."""

    batch_size: int = 8
    max_batch_tokens: int = 8192
    bucket: bool = True  # sort prompts by length so that batches hold similar lengths

    def __post_init__(self):
        _at_least_one(self, ("batch_size", "max_batch_tokens"))


ENCODE_CHUNK = 256  # prompts tokenized per tokenizer call


def encode(lm: LoadedModel, texts: tuple[str, ...] | list[str], tokens: Tokenization):
    """Token ids per prompt (truncated to max_tokens) and which prompts were truncated.

    With the chat template, a prompt too long loses the end of its user content, never the
    template: every prompt keeps the same assistant header at its last positions.
    """
    tok, limit = lm.tokenizer, tokens.limit(lm)
    if tokens.resolve(lm).chat_template:
        rendered = [_render(tok, t) for t in texts]
        full, truncated = _tokenize(tok, rendered, limit, special=False)
        for i in np.flatnonzero(truncated):
            full[i] = _fit_chat(tok, texts[i], limit)
        return full, truncated
    full, truncated = _tokenize(tok, texts, limit, special=True)
    if truncated.any():
        idx = np.flatnonzero(truncated)
        cut = tok([texts[i] for i in idx], truncation=True, max_length=limit)["input_ids"]
        for i, ids in zip(idx, cut, strict=True):
            full[i] = ids
    return full, truncated


def _tokenize(tok, texts, limit: int, special: bool):
    """Ids cut at limit + 1, in chunks.

    One token over is enough to see truncation, and memory stays bounded.
    """
    full = [
        ids
        for start in range(0, len(texts), ENCODE_CHUNK)
        for ids in tok(
            list(texts[start : start + ENCODE_CHUNK]),
            add_special_tokens=special,
            truncation=True,
            max_length=limit + 1,
            return_attention_mask=False,
        )["input_ids"]
    ]
    return full, np.array([len(ids) > limit for ids in full], dtype=bool)


def _render(tok, content: str) -> str:
    import jinja2

    try:
        return tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    except jinja2.TemplateError as err:  # a sandbox refusal (SecurityError) or a broken template
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(
            f"{getattr(tok, 'name_or_path', 'the tokenizer')}: its chat template fails "
            f"({type(err).__name__}: {first}); use --no-chat-template"
        ) from None


def _fit_chat(tok, text: str, limit: int) -> list[int]:
    """The chat template around the longest start of ``text`` that fits in ``limit`` tokens."""
    overhead = len(tok(_render(tok, ""), add_special_tokens=False)["input_ids"])
    content = tok(text, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
    budget = limit - overhead
    while (
        budget > 0
    ):  # token boundaries may shift when the cut content is re-rendered: shrink until it fits
        ids = tok(_render(tok, tok.decode(content[:budget])), add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return ids
        budget -= len(ids) - limit
    raise UserError(
        f"--max-tokens {limit}: the chat template alone takes {overhead} tokens; raise --max-tokens"
    )


# A batch closes before its padding would exceed this share of its positions (and the slack):
# small prompt samples have few close lengths, and the padded positions cost a full forward pass.
MAX_PADDING, PADDING_SLACK = 0.1, 16


def plan_batches(lengths: np.ndarray, batching: Batching) -> list[np.ndarray]:
    """Prompt indices per batch.

    Sorted by length when bucketing; capped by size, padded tokens and padding share.
    """
    order = np.argsort(-lengths, kind="stable") if batching.bucket else np.arange(len(lengths))
    batches, current, longest, real = [], [], 0, 0
    for i in order:
        grow = max(longest, int(lengths[i]))
        size = grow * (len(current) + 1)
        padding = size - real - int(lengths[i])
        if current and (
            len(current) == batching.batch_size
            or size > batching.max_batch_tokens
            or padding > max(MAX_PADDING * size, PADDING_SLACK)
        ):
            batches.append(np.array(current))
            current, grow, real = [], int(lengths[i]), 0
        current.append(i)
        longest, real = grow, real + int(lengths[i])
    if current:
        batches.append(np.array(current))
    return batches


def pad_batch(
    ids, lengths, batch, pad_id: int, side: str, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, longest) of the prompts in ``batch``, padded on ``side``."""
    width = int(lengths[batch].max())
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        span = slice(width - lengths[i], width) if side == "left" else slice(0, lengths[i])
        input_ids[row, span] = torch.tensor(ids[i])
        mask[row, span] = 1
    return input_ids.to(device), mask.to(device)
