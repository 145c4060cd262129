"""Rebuild `builtin:benign` (src/jbtrace/prompts/data/benign/manifest.json) from people's requests.

Prints, per source, what was kept and what was removed by reason. Needs the packages the
sources read (`make setup`). Run: PYTHONPATH=src python tools/build_benign_corpus.py [OUT_DIR]
The earlier, synthetic corpus is rebuilt by tools/build_synthetic_corpus.py.
"""

import sys

from jbtrace.models import load_model
from jbtrace.prompts.corpus_build.people import TOKENIZER, build


def say(message: str) -> None:
    print(message, file=sys.stderr)


tokenizer = load_model(TOKENIZER).tokenizer
report = build(
    lambda text: len(tokenizer(text)["input_ids"]),
    sys.argv[1] if len(sys.argv) > 1 else None,
    progress=say,
)
for name, kept in report.kept.items():
    reasons = ", ".join(f"{k} {v}" for k, v in report.removed[name].most_common())
    print(f"{name:<14} kept {kept:>5}   removed: {reasons or 'none'}")
print(f"{'total':<14} kept {sum(report.kept.values()):>5}")
