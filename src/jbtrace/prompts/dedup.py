"""Exact and near-duplicate prompts: normalised text, 5-gram word shingles, MinHash LSH.

Two prompts are duplicates when their normalised texts are equal, or when the Jaccard
similarity of their 5-word shingle sets is at least `threshold` (default 0.8). MinHash LSH
(datasketch) proposes candidates at a lower threshold; every candidate is confirmed with the
exact Jaccard, so the reported pairs are exact, not estimates.
"""

from __future__ import annotations

import re
import unicodedata

NGRAM = 5
THRESHOLD = 0.8
NUM_PERM = 128
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """NFKC, case-folded, words only (punctuation and whitespace runs become one space)."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def shingles(text: str, n: int = NGRAM) -> frozenset[str]:
    """The set of n-word shingles of the normalised text (the whole text if it is shorter)."""
    words = normalise(text).split()
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """Texts added under keys; `match(text)` gives the keys of exact or near duplicates."""

    def __init__(self, threshold: float = THRESHOLD):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=max(0.5, threshold - 0.2), num_perm=NUM_PERM)
        self.exact: dict[str, object] = {}
        self.sets: dict[object, frozenset] = {}

    @staticmethod
    def _minhash(grams: frozenset):
        from datasketch import MinHash

        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([g.encode("utf-8") for g in grams])
        return m

    def add(self, key, text: str) -> None:
        grams = shingles(text)
        self.exact.setdefault(normalise(text), key)
        self.sets[key] = grams
        self.lsh.insert(key, self._minhash(grams), check_duplication=False)

    def match(self, text: str) -> list[tuple[object, float]]:
        """(key, Jaccard) of every indexed text that `text` duplicates, most similar first."""
        grams = shingles(text)
        found = {}
        if (key := self.exact.get(normalise(text))) is not None:
            found[key] = 1.0
        for key in self.lsh.query(self._minhash(grams)):
            score = jaccard(grams, self.sets[key])
            if score >= self.threshold:
                found[key] = max(found.get(key, 0.0), score)
        return sorted(found.items(), key=lambda kv: -kv[1])
