"""Near-duplicate clusters of prompts: MinHash + LSH candidates, exact 5-gram Jaccard to confirm.

Two prompts are near-duplicates when the Jaccard similarity of their sets of word 5-grams
(lower-cased, punctuation split off; a prompt shorter than five words is one gram) is at
least ``threshold``. ``datasketch``'s LSH proposes candidate pairs in linear time; each
candidate is confirmed on the exact sets, and confirmed pairs are joined into clusters
(connected components), so a cluster id per prompt can feed grouped cross-validation.
"""

from __future__ import annotations

import re

import numpy as np
from datasketch import MinHash, MinHashLSH

NGRAM = 5
THRESHOLD = 0.8
_WORD = re.compile(r"\w+|[^\w\s]")


def shingles(text: str, n: int = NGRAM) -> frozenset[str]:
    """Word n-grams of a normalised text (the whole text as one gram when it has fewer words)."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def clusters(texts: list[str] | tuple[str, ...], threshold: float = THRESHOLD, num_perm: int = 128,
             seed: int = 1) -> np.ndarray:
    """Cluster id per text (0..k-1, in order of first appearance); near-duplicates share an id."""
    grams = [shingles(t) for t in texts]
    # LSH tuned a little below the threshold so that true pairs near it are rarely missed
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.15), num_perm=num_perm)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, g in enumerate(grams):
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch([s.encode("utf-8") for s in g])
        for j in lsh.query(m):
            if jaccard(g, grams[j]) >= threshold:
                parent[root(i)] = root(j)
        lsh.insert(i, m)
    roots = [root(i) for i in range(len(texts))]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([ids[r] for r in roots], dtype=int)
