"""Model-free text baselines: what a detector must beat before its trace says anything.

Each baseline turns prompt texts into a feature matrix that goes through exactly the protocol,
classifiers, thresholds and tests of the trace detectors (``evaluate.evaluate``), so both are
scored by one code path:

- ``length``: log token count (the model's tokenizer, before truncation);
- ``surface``: six surface counts: characters, newlines, bullet lines, quote characters,
  second-person words and capital letters (each as log(1 + count));
- ``ngram``: hashed word 1–2-grams (scikit-learn's ``HashingVectorizer``, l2-normalised term
  counts), dense so that the standardised classifiers take them as they take hidden states.
"""

from __future__ import annotations

import re

import numpy as np

BASELINES = ("length", "surface", "ngram")
SURFACE = ("characters", "newlines", "bullets", "quotes", "second_person", "capitals")
NGRAM_FEATURES = 2**13  # hashed buckets of the word 1–2-gram baseline
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s", re.MULTILINE)
_QUOTES = re.compile(r"[\"'“”‘’«»`]")
_SECOND = re.compile(r"\b(?:you|your|yours|yourself|yourselves|you're|you'll|you've)\b", re.I)
_CAPITALS = re.compile(r"[A-Z]")


def surface_counts(texts: list[str]) -> np.ndarray:
    """(prompts, 6) log(1 + count) of each of ``SURFACE``, in that order."""
    counts = [
        (
            len(t),
            t.count("\n"),
            len(_BULLET.findall(t)),
            len(_QUOTES.findall(t)),
            len(_SECOND.findall(t)),
            len(_CAPITALS.findall(t)),
        )
        for t in texts
    ]
    return np.log1p(np.asarray(counts, dtype=float).reshape(len(texts), len(SURFACE)))


def hashed_ngrams(texts: list[str], n_features: int = NGRAM_FEATURES) -> np.ndarray:
    """(prompts, n_features) float32 hashed word 1–2-gram counts, each row l2-normalised."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2"
    )
    return vectorizer.transform(texts).astype(np.float32).toarray()


def baseline_features(texts: list[str], token_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Feature matrix of every baseline in ``BASELINES`` for ``texts`` (rows aligned)."""
    return {
        "length": np.log(np.asarray(token_counts, dtype=float))[:, None],
        "surface": surface_counts(texts),
        "ngram": hashed_ngrams(texts),
    }
