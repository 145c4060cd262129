"""Test sets for ``detect``: near-duplicates of training prompts out, length-filtered, sampled."""

from __future__ import annotations

import numpy as np

from jbtrace.detect import features as F
from jbtrace.errors import UserError
from jbtrace.prompts import PromptSet


def test_set_prompts(
    lm,
    s: PromptSet,
    clusters: np.ndarray,
    train_texts: set,
    train_clusters: np.ndarray,
    options,
) -> tuple[list[str], dict]:
    """A test set without near-duplicates of training prompts, then the length filter and limit."""
    near = np.isin(clusters, train_clusters)
    exact = np.array([t in train_texts for t in s.texts], bool)
    fresh = [t for t, dup in zip(s.texts, near, strict=True) if not dup]
    lengths = (
        F.tokenize(lm, fresh, options.max_tokens, options.chat_template).full_lengths
        if fresh
        else np.array([], dtype=int)
    )
    fresh = [t for t, n in zip(fresh, lengths, strict=True) if n >= options.test_min_tokens]
    if options.test_limit and len(fresh) > options.test_limit:
        pick = np.random.default_rng(options.seed).choice(
            len(fresh), options.test_limit, replace=False
        )
        fresh = [fresh[i] for i in np.sort(pick)]
    if not fresh:
        raise UserError(
            f"test set {s.name!r}: no prompts left after removing near-duplicates of training "
            f"prompts and those under --test-min-tokens {options.test_min_tokens}"
        )
    return fresh, {
        "source": s.source,
        "loaded": len(s),
        "overlap_removed": int(exact.sum()),
        "near_duplicates_removed": int((near & ~exact).sum()),
        "n": len(fresh),
    }
