"""Near-duplicate clusters of prompts, for grouped evaluation.

Two prompts are near-duplicates when ``dedup`` says so (equal normalised text, or word 5-gram
Jaccard ≥ ``threshold``, MinHash LSH candidates confirmed on the exact sets). Near-duplicate
pairs are joined into clusters (connected components), so that a cluster id per prompt can
feed grouped cross-validation and keep near-copies on one side of every split.
"""

from __future__ import annotations

import numpy as np

from jbtrace.prompts.dedup import NGRAM, THRESHOLD, NearDuplicateIndex  # noqa: F401 (NGRAM re-exported)


def clusters(texts: list[str] | tuple[str, ...], threshold: float = THRESHOLD) -> np.ndarray:
    """Cluster id per text (0..k-1, in order of first appearance); near-duplicates share an id."""
    index = NearDuplicateIndex(threshold)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, text in enumerate(texts):
        for j, _ in index.match(text):
            parent[root(i)] = root(j)
        index.add(i, text)
    roots = [root(i) for i in range(len(texts))]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([ids[r] for r in roots], dtype=int)
