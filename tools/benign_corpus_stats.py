"""Measure jbtrace's benign corpora: the numbers of their dataset card.

Per source of `builtin:benign` and `builtin:benign-synthetic`: size, who wrote it, licence,
token lengths (the SmolLM2 tokenizer, the smallest model's; no special tokens), the share over
300 tokens, each prompt's nearest-neighbour 5-gram Jaccard within the corpus, and templating:
the median share of a prompt's 5-grams that recur in at least 5% of the other prompts of its
source. Per corpus: how well word counts name a prompt's source (logistic regression, 5-fold
stratified cross-validation, accuracy) — near 1 means the sources are told apart by surface.

Run: PYTHONPATH=src python tools/benign_corpus_stats.py [bench/results/benign_corpus.json]
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from jbtrace.models import load_model
from jbtrace.prompts.corpus import corpus, manifest
from jbtrace.prompts.dedup import shingles

RECUR = 0.05
TOKENIZER = "builtin:smollm2"


def nearest_jaccard(x) -> np.ndarray:
    inter = (x @ x.T).toarray()
    size = np.asarray(x.sum(1)).ravel()
    jac = inter / np.maximum(size[:, None] + size[None, :] - inter, 1)
    np.fill_diagonal(jac, 0)
    return jac.max(1)


def recurring_share(x) -> np.ndarray:
    """Per prompt: the share of its 5-grams found in >= RECUR of the other prompts."""
    x = x.tocsr()
    others = np.asarray(x.sum(0)).ravel()
    out = np.zeros(x.shape[0])
    for i in range(x.shape[0]):
        grams = x.indices[x.indptr[i] : x.indptr[i + 1]]
        out[i] = np.mean(others[grams] - 1 >= RECUR * (x.shape[0] - 1)) if grams.size else 0
    return out


def source_accuracy(texts: list[str], labels: np.ndarray) -> float:
    x = CountVectorizer(min_df=2).fit_transform(texts)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    model = LogisticRegression(max_iter=2000)
    return float(cross_val_score(model, x, labels, cv=folds, scoring="accuracy").mean())


def measure(name: str, tokenizer) -> dict:
    rows = corpus(name=name)
    texts = [r["text"] for r in rows]
    source = np.array([r["source"] for r in rows])
    n = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
    x = CountVectorizer(analyzer=shingles, binary=True).fit_transform(texts).astype(np.float32)
    nearest = nearest_jaccard(x)
    sources = {}
    for s in manifest(name)["sources"]:
        m = source == s["name"]
        sources[s["name"]] = {
            "prompts": int(m.sum()),
            "written_by": s.get("written_by"),
            "licence": s.get("licence"),
            "package": s.get("package"),
            "median_tokens": float(np.median(n[m])),
            "over_300_tokens": float((n[m] > 300).mean()),
            "nearest_jaccard_median": float(np.median(nearest[m])),
            "nearest_jaccard_max": float(nearest[m].max()),
            "recurring_5gram_share_median": float(np.median(recurring_share(x[m]))),
        }
    return {
        "prompts": len(rows),
        "over_300_tokens": float((n > 300).mean()),
        "token_quartiles": [float(q) for q in np.percentile(n, [25, 50, 75])],
        "source_from_word_counts_accuracy": source_accuracy(texts, source),
        "sources": sources,
    }


def main(out: Path) -> None:
    start, load = time.time(), os.getloadavg()[0]
    tokenizer = load_model(TOKENIZER).tokenizer
    result = {
        "command": "PYTHONPATH=src python tools/benign_corpus_stats.py",
        "settings": {"tokenizer": TOKENIZER, "recurring_in": RECUR, "cv_folds": 5},
        "corpora": {name: measure(name, tokenizer) for name in ("benign", "benign-synthetic")},
        "seconds": round(time.time() - start, 1),
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/benign_corpus.json"))
