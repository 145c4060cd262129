"""Refusal-direction steering: an intervention beside the guard's layer bypass.

Following Arditi et al. (2024), the refusal direction at a layer is the difference between the
mean residual-stream state of harmful prompts and that of harmless prompts, read at the last
prompt token (with the chat template, the token where the assistant's turn begins). Adding it
during generation pushes the model towards refusing. `Steering` holds the layer and the vector
(direction × scale); `defend.guard.generate` applies it to every new token through
`models.surgery.steer`. Scale 0 is plain generation, token for token (tested).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from jbtrace.detect import features
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.models.tokens import MAX_TOKENS


@dataclass(frozen=True)
class Steering:
    """Add ``scale`` × ``direction`` to the residual stream after block ``layer``."""

    layer: int
    direction: np.ndarray  # (hidden,), harmful mean minus harmless mean
    scale: float = 1.0

    def hooked(self, lm: LoadedModel):
        vector = torch.as_tensor(self.scale * self.direction, device=lm.device)
        return surgery.steer(lm.model, self.layer, vector)

    def identity(self) -> dict:
        """What the answers it steers depend on (the direction by hash)."""
        digest = hashlib.sha256(np.ascontiguousarray(self.direction, np.float64).tobytes())
        return {"layer": self.layer, "scale": self.scale, "direction": digest.hexdigest()[:16]}

    def describe(self) -> dict:
        return {
            "layer": self.layer,
            "scale": self.scale,
            "direction_norm": float(np.linalg.norm(self.direction)),
        }


@dataclass(frozen=True)
class SteerOptions:
    """Where the refusal direction is read and from which prompts (`guard --mode steer`)."""

    layer: int
    scale: float = 1.0
    harmful: str = "builtin:harmful:advbench"
    harmless: str = "builtin:benign"
    limit: int = 64  # prompts of each side (seeded sample)
    seed: int = 0


def fit_steering(
    lm: LoadedModel, options: SteerOptions, exclude=(), max_tokens: int = MAX_TOKENS
) -> tuple[Steering, dict]:
    """The steering of ``options`` for ``lm``, fitted on prompts not in ``exclude`` (the prompts
    it will be evaluated on), and what it was fitted on."""
    from jbtrace.prompts import load_prompts

    exclude, sides, used = set(exclude), {}, {}
    for side in ("harmful", "harmless"):
        source = getattr(options, side)
        texts = [t for t in load_prompts(side, source, seed=options.seed).texts if t not in exclude]
        rng = np.random.default_rng(options.seed)
        keep = np.sort(rng.permutation(len(texts))[: options.limit])
        sides[side] = [texts[i] for i in keep]
        used[side] = {"source": source, "prompts": len(sides[side])}
    direction = refusal_direction(
        lm, sides["harmful"], sides["harmless"], options.layer, max_tokens
    )
    steering = Steering(options.layer, direction, options.scale)
    return steering, {**steering.describe(), "fitted_on": used, "evaluated_prompts_left_out": True}


def last_token_states(
    lm: LoadedModel,
    texts,
    layer: int,
    max_tokens: int = MAX_TOKENS,
    chat_template: bool | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """(prompts, hidden) residual-stream states at ``layer`` (store convention), last token."""
    encoded = features.tokenize(lm, list(texts), max_tokens, chat_template)
    found = features.capture(lm, encoded, [("resid", layer)], ("last",), batch_size=batch_size)
    return found[("resid", layer)]["last"].astype(np.float64)


def refusal_direction(
    lm: LoadedModel,
    harmful,
    harmless,
    layer: int,
    max_tokens: int = MAX_TOKENS,
    chat_template: bool | None = None,
) -> np.ndarray:
    """Mean last-token state of ``harmful`` prompts minus that of ``harmless`` ones at ``layer``."""
    if not 1 <= layer <= surgery.num_blocks(lm.model.config):
        raise UserError(f"the refusal direction is read after a block: layer 1..L, not {layer}")
    if len(harmful) == 0 or len(harmless) == 0:
        raise UserError("the refusal direction needs harmful and harmless prompts")
    states = [
        last_token_states(lm, texts, layer, max_tokens, chat_template)
        for texts in (harmful, harmless)
    ]
    return states[0].mean(0) - states[1].mean(0)
