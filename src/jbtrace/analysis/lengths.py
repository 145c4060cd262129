"""Prompt lengths: their quantiles, and the layer profile recomputed on length-matched prompts."""

from __future__ import annotations

import numpy as np

from jbtrace.analysis.inference import bh, permuted_labels, welch_permutation_p
from jbtrace.analysis.profiles import PromptValues
from jbtrace.prompts.matching import PROCEDURE as MATCHING
from jbtrace.prompts.matching import match_lengths


def length_quantiles(tokens: np.ndarray) -> dict:
    qs = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
    return {
        "n": int(tokens.size),
        "mean": float(tokens.mean()) if tokens.size else None,
        "quantiles": {str(k): float(np.quantile(tokens, k)) for k in qs} if tokens.size else {},
    }


def length_matched(
    pv: PromptValues, tokens: np.ndarray, prof: dict, n_permutations: int, seed: int, q: float
) -> dict:
    """The layer profile recomputed on length-matched prompts, and how much of it survives."""
    rng = np.random.default_rng(seed)
    kept = match_lengths(tokens, pv.is_b, rng)
    is_b = pv.is_b[kept]
    out = {
        "procedure": MATCHING,
        "prompts_kept": {"a": int((~is_b).sum()), "b": int(is_b.sum())},
        "lengths": {
            "a": length_quantiles(tokens[kept][~is_b]),
            "b": length_quantiles(tokens[kept][is_b]),
        },
    }
    if is_b.sum() < 2 or (~is_b).sum() < 2:
        return {**out, "layers": [], "survival": None, "note": "too little length overlap to match"}
    diff, p = welch_permutation_p(pv.values[kept], is_b, permuted_labels(is_b, n_permutations, rng))
    qv = bh(p)
    base = prof["diff"]
    denom = float(base @ base)
    return {
        **out,
        "survival": float(diff @ base / denom) if denom > 0 else None,
        "layers_significant": int((qv < q).sum()),
        "layers": [
            {
                "layer": int(layer),
                "diff": float(d),
                "unmatched_diff": float(u),
                "ratio": float(d / u) if u else None,
                "p": float(pp),
                "q": float(qq),
                "significant": bool(qq < q),
            }
            for layer, d, u, pp, qq in zip(pv.layers, diff, base, p, qv, strict=True)
        ],
    }
