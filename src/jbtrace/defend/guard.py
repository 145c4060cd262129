"""The guard: flag a prompt with a saved detector, then generate with jailbreak-susceptible blocks
bypassed.

Modes: ``guard`` (flagged prompts are generated with the blocks bypassed, the rest untouched),
``always`` (every prompt bypassed: the cost of removing the blocks alone), ``never`` (the
detector scores, nothing is bypassed: the baseline), ``refuse`` (a flagged prompt gets a fixed
refusal, `REFUSAL`, without generation: the cheap intervention the others must beat) and
``steer`` (a flagged prompt is generated with the refusal direction added, `defend.steer`).
Generation is transformers' own ``generate`` on left-padded batches, greedy unless sampling is
asked for (seeded per batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from jbtrace.detect.detector import Detector, Linear
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.models.tokens import (
    MAX_TOKENS,
    Batching,
    Tokenization,
    encode,
    pad_batch,
    plan_batches,
)
from jbtrace.prompts import PromptSet

MODES = ("guard", "always", "never", "refuse", "steer")
REFUSAL = "I can't help with that."  # what ``refuse`` answers a flagged prompt


@dataclass(frozen=True)
class GenerateOptions:
    """How responses are generated."""

    max_new_tokens: int = 64
    batch_size: int = 8
    max_tokens: int = MAX_TOKENS  # prompts are truncated to this many tokens (counted)
    chat_template: bool | None = None  # None: the tokenizer's chat template when it has one
    sample: bool = False  # greedy unless True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    use_cache: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: generate at least one token")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: need at least 1")
        if self.sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise UserError("sampling needs --temperature > 0 and 0 < --top-p <= 1")

    @property
    def tokenization(self) -> Tokenization:
        """How prompts are tokenized for generation (left-padded batches)."""
        return Tokenization(self.max_tokens, self.chat_template, padding_side="left")


@dataclass
class Generated:
    """One response: its text, its new token ids, and the prompt as the model saw it."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    truncated: bool


def prompt_ids(
    lm: LoadedModel, texts, options: GenerateOptions
) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of each prompt as generation sees it (chat template when used), and which were
    truncated."""
    return encode(lm, list(texts), options.tokenization)


def generate(
    lm: LoadedModel,
    texts,
    options: GenerateOptions = GenerateOptions(),
    bypass=(),
    progress: Callable[[int], None] | None = None,
    steering=None,
) -> list[Generated]:
    """Responses to ``texts`` with blocks ``bypass`` skipped (none: the model as it is) and, with
    a ``steering`` (`defend.steer.Steering`), its vector added to the residual stream; in the
    order given."""
    if not lm.is_causal:
        raise UserError(f"{lm.name} cannot generate text (not a causal language model)")
    texts = list(texts)
    if not texts:
        return []
    tok = lm.tokenizer
    ids, truncated = prompt_ids(lm, texts, options)
    lengths = np.array([len(x) for x in ids])
    batches = plan_batches(lengths, Batching(batch_size=options.batch_size))
    out: list[Generated | None] = [None] * len(texts)
    eos = lm.model.generation_config.eos_token_id
    kwargs = {
        "max_new_tokens": options.max_new_tokens,
        "use_cache": options.use_cache,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": eos if eos is not None else tok.eos_token_id,
    }
    if options.sample:
        kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    stops = set(np.atleast_1d(kwargs["eos_token_id"]).tolist())
    steered = steering.hooked(lm) if steering is not None else contextlib.nullcontext()
    with surgery.bypass(lm.model, bypass), steered, torch.inference_mode():
        for number, batch in enumerate(batches):
            input_ids, mask = pad_batch(
                ids, lengths, batch, tok.pad_token_id, options.tokenization.padding_side, lm.device
            )
            if options.sample:
                torch.manual_seed(options.seed * 100_003 + number)
            new = lm.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)[
                :, input_ids.shape[1] :
            ]
            for row, i in enumerate(batch):
                tokens = new[row].tolist()
                end = next((k for k, t in enumerate(tokens) if t in stops), len(tokens))
                tokens = tokens[:end]
                out[i] = Generated(
                    tok.decode(tokens, skip_special_tokens=True).strip(),
                    tokens,
                    int(lengths[i]),
                    bool(truncated[i]),
                )
            if progress:
                progress(len(batch))
    return out


def guard_generate(
    lm: LoadedModel,
    texts,
    flags,
    bypass,
    options: GenerateOptions = GenerateOptions(),
    progress: Callable[[int], None] | None = None,
    steering=None,
    generate_with=None,
) -> list[Generated]:
    """Flagged prompts generated with ``bypass`` skipped (and ``steering`` added), the others by
    the model as it is; ``generate_with`` replaces `generate` (one that keeps its answers)."""
    fn = generate_with or generate
    flags = np.asarray(flags, dtype=bool)
    texts = list(texts)
    out: list[Generated | None] = [None] * len(texts)
    for on, skip in ((False, ()), (True, bypass)):
        where = np.flatnonzero(flags == on)
        steer = steering if on else None
        answers = fn(lm, [texts[i] for i in where], options, skip, progress, steer)
        for i, g in zip(where, answers, strict=True):
            out[i] = g
    return out


@dataclass
class Flags:
    """What the detector said about each prompt."""

    detector: Linear
    threshold: float
    scores: np.ndarray  # the detector's native score (threshold applies to it)
    probabilities: np.ndarray
    flags: np.ndarray


def check_detector(detector: Detector, lm: LoadedModel) -> None:
    """A detector only applies to the model it was fitted on."""
    info = detector.config.get("model", {})
    same = info.get("spec") == lm.spec and (
        not lm.random_init or info.get("seed") == lm.provenance.get("seed")
    )
    if not same:
        fitted = f"{info.get('spec')}" + (f" (seed {info.get('seed')})" if lm.random_init else "")
        raise UserError(
            f"the detector was fitted on {fitted}, not on {lm.spec}"
            + (f" (seed {lm.provenance.get('seed')})" if lm.random_init else "")
            + ": give that model, or fit a detector on this one with `jbtrace detect --save`"
        )


def choose_flagger(
    detector: Detector,
    layer: int | None = None,
    source: str | None = None,
    feature: str | None = None,
) -> Linear:
    """The layer detector to flag with: the recommended one, or the best-CV one matching what is
    asked."""
    if layer is None and source is None and feature is None:
        return detector.recommended()
    matches = [
        d
        for d in detector.layers
        if (layer is None or d.layer == layer)
        and (source is None or d.source == source)
        and (feature is None or d.feature == feature)
    ]
    if not matches:
        have = ", ".join(sorted({f"{d.source}.{d.layer}.{d.feature}" for d in detector.layers}))
        raise UserError(
            f"the detector has no layer detector matching layer={layer} source={source} "
            f"feature={feature}; it has {have}"
        )
    return max(matches, key=lambda d: ((d.cv or {}).get("f1", 0.0), (d.cv or {}).get("auroc", 0.0)))


def flag(
    lm: LoadedModel,
    detector: Detector,
    which: Linear,
    texts,
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Flags:
    """Score ``texts`` with one layer detector; flag at its saved threshold unless another is
    given."""
    texts = list(texts)
    threshold = which.threshold if threshold is None else float(threshold)
    if not texts:
        return Flags(which, threshold, np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
    rows = detector.only([which]).score(lm, [PromptSet("prompts", tuple(texts), "guard")], progress)
    scores = np.array([r["score"] for r in rows])
    return Flags(
        which, threshold, scores, np.array([r["probability"] for r in rows]), scores >= threshold
    )


def susceptible_layers(detector: Detector, n_blocks: int, k: int = 2) -> tuple[list[int], str]:
    """The k blocks most susceptible to jailbreaks according to the detect results, and how they
    were chosen.

    A block's susceptibility is the best cross-validated F1 (ties: AUROC, then the earlier block)
    among the saved detectors that read what that block writes: its sub-layer outputs
    (``attn_out``, ``mlp_out``, ``mixer``) at index l when the detector has them, else the
    residual stream at layer l (the output of block l). Layer 0 is not a block and never chosen.
    """
    if k < 1:
        raise UserError(f"--bypass-k {k}: bypass at least one block")
    own = [d for d in detector.layers if d.cv and d.source != "resid" and 1 <= d.layer <= n_blocks]
    pool = own or [
        d for d in detector.layers if d.cv and d.source == "resid" and 1 <= d.layer <= n_blocks
    ]
    if not pool:
        raise UserError(
            "the detector has no cross-validated layer detectors for blocks 1..L; give --bypass"
        )
    best: dict[int, Linear] = {}
    for d in pool:
        if d.layer not in best or (d.cv["f1"], d.cv["auroc"]) > (
            best[d.layer].cv["f1"],
            best[d.layer].cv["auroc"],
        ):
            best[d.layer] = d
    ranked = sorted(best.values(), key=lambda d: (-d.cv["f1"], -d.cv["auroc"], d.layer))[:k]
    sources = "/".join(sorted({d.source for d in pool}))
    how = (
        f"the {len(ranked)} block(s) whose {sources} detector has the highest cross-validated F1 "
        f"(ties: AUROC, then the earlier block): "
        + ", ".join(f"{d.layer} (F1 {d.cv['f1']:.3f}, AUROC {d.cv['auroc']:.3f})" for d in ranked)
    )
    return sorted(d.layer for d in ranked), how


def parse_bypass(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--bypass {text!r}: expected layer indices such as 3,5") from None
    if not layers:
        raise UserError(f"--bypass {text!r}: expected layer indices such as 3,5")
    return layers
