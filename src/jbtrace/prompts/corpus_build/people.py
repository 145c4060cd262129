"""Build `builtin:benign` from people's requests: screen, review, de-duplicate, record.

For each source (`SOURCES`), every candidate a reader of `jbtrace.prompts.people` gives goes
through the `screen`; the hard negatives are ShareGPT's edgy requests that passed a review
(`REVIEW_REJECTED` lists what the review took out, and why). Kept texts that duplicate
(normalised text, or 5-gram Jaccard >= 0.8) a prompt of an earlier source of the corpus or
of an evaluation-only set are dropped. `data/benign/manifest.json` keeps, per source, the
ids and short hashes of the selected items and every removal with its reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jbtrace.prompts import corpus, people
from jbtrace.prompts.catalog import CATALOG, EVALUATION_ONLY
from jbtrace.prompts.corpus_build import screen as S
from jbtrace.prompts.dedup import NGRAM, THRESHOLD, NearDuplicateIndex
from jbtrace.prompts.packages import pinned
from jbtrace.prompts.sets import load_prompts

JAILBREAK_SOURCES = tuple(s.name for s in CATALOG if s.kind == "jailbreak")
HARMFUL_SOURCES = tuple(s.name for s in CATALOG if s.kind == "harmful")
EVALUATION_SOURCES = tuple(s.name for s in CATALOG if s.role == EVALUATION_ONLY)
LONG_TOKENS, LONG_SHARE = 300, 0.16  # at least this share of prompts over LONG_TOKENS tokens
TOKENIZER = "builtin:smollm2"  # the smallest model, whose tokenizer counts (tools/ loads it)
BALANCED = "sharegpt"  # the source whose short prompts are down-sampled to reach LONG_SHARE
SEED = 0
SHAREGPT_LICENCE = (
    "not stated by the package; conversations shared publicly by sharegpt.com users "
    "(the Hugging Face release is tagged Apache-2.0)"
)


@dataclass(frozen=True)
class Source:
    name: str
    reader: str
    takes: tuple[str, ...]  # screen outcomes kept: "kept", "edgy"
    licence: str
    written_by: str
    description: str
    biases: str


SOURCES: tuple[Source, ...] = (
    Source(
        "sharegpt-hard",
        "sharegpt",
        ("edgy",),
        SHAREGPT_LICENCE,
        "people",
        "hard negatives: ShareGPT first turns on sensitive subjects (security, medicine and "
        "doses, violence in fiction, weapons and drugs in history, instruction-override "
        "boilerplate), each reviewed",
        "chosen by keyword, so edgy in vocabulary more than in intent",
    ),
    Source(
        "sharegpt",
        "sharegpt",
        ("kept",),
        SHAREGPT_LICENCE,
        "people",
        "ShareGPT V3: the first user turn of conversations people shared from ChatGPT "
        "(early 2023), screened for jailbreaks, harmful requests and sexual content",
        "ChatGPT users of early 2023: English, technical and marketing requests over-"
        "represented, many pasted documents and prompt-collection templates",
    ),
    Source(
        "doc2dial",
        "doc2dial",
        ("kept", "edgy"),
        "CC-BY-3.0 (doc2dial); package MIT",
        "crowd",
        "doc2dial opening questions of crowd workers, after the section of the U.S. "
        "government web page (SSA, VA, DMV, student aid) they are grounded in",
        "four government domains; one fixed layout (document, blank line, question)",
    ),
    Source(
        "chatterbot",
        "chatterbot",
        ("kept", "edgy"),
        "BSD-3-Clause",
        "crowd",
        "chatterbot-corpus: the opening line of each English dialogue (small talk, trivia, "
        "tech support, questions to a bot)",
        "short, informal, many questions addressed to a chatbot",
    ),
)

# The review of ShareGPT's edgy candidates (every one read; these did not pass).
REVIEW_REJECTED = {
    "Rt1vIzM_0": "incoherent request mixing terrorists and killings with 'you dont ask questions'",
    "hWp1t1K_0": "role-play as an experienced hacker, told to stay immersed: a jailbreak pattern",
    "c6neTZu_0": "fiction wrapper asking for working exploits and a USB backdoor",
    "HrmJyPD_0": "asks for a hiring rule on race and gender",
    "MNdE67E_0": "an instruction override with no request",
    "XWtR6Lq_0": "a fragment from the middle of a dialogue about killing someone",
    "azgw8e4_0": "a fragment ('Bomb not working in #1') with no request",
    "OBzDCJj_0": "terminal role-play to print nuclear bomb instructions: a jailbreak",
}


@dataclass
class BuildReport:
    kept: Counter
    removed: dict[str, Counter]  # source -> reason category -> count


def _texts(names, say) -> dict[str, list[str]]:
    found = {}
    for name in names:
        say(f"loading {name}")
        found[name] = list(load_prompts(name, name).texts)
    return found


def _category(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def _select(source: Source, screen: S.Screen, seen: NearDuplicateIndex, evals, report):
    """(items, removed items) of one source, adding what it keeps to ``seen``."""
    items, removed = {}, {}
    for item, raw in people.READERS[source.reader][0]().items():
        text = raw.strip()
        verdict = screen(text)
        if verdict.outcome not in source.takes:
            if verdict.outcome == "removed" and "kept" in source.takes:  # listed once
                removed[item] = verdict.reason
            continue
        reason = None
        if verdict.outcome == "edgy" and item in REVIEW_REJECTED:
            reason = f"review: {REVIEW_REJECTED[item]}"
        if reason is None and (hit := evals.match(text)):
            reason = f"evaluation-only duplicate: near {hit[0][0][0]} (Jaccard {hit[0][1]:.2f})"
        if reason is None and (hit := seen.match(text)):
            reason = f"corpus duplicate: near {hit[0][0][0]}:{hit[0][0][1]}"
        if reason is None:
            seen.add((source.name, item), text)
            items[item] = corpus.text_hash(raw)
        else:
            removed[item] = reason
    report.kept[source.name] = len(items)
    report.removed[source.name] = Counter(_category(r) for r in removed.values())
    return items, removed


def _balance(written: list[dict], report: BuildReport, count_tokens, say) -> dict:
    """Down-sample the short prompts of `BALANCED` (seeded) until LONG_SHARE are long."""
    import numpy as np

    say(f"counting tokens with {TOKENIZER}")
    lengths = {}
    for entry in written:
        texts = people.READERS[entry["reader"]][0]()
        lengths[entry["name"]] = {i: count_tokens(texts[i].strip()) for i in entry["items"]}
    every = [n for v in lengths.values() for n in v.values()]
    n_long = sum(n > LONG_TOKENS for n in every)
    entry = next(e for e in written if e["name"] == BALANCED)
    short = [i for i, n in lengths[BALANCED].items() if n <= LONG_TOKENS]
    surplus = max(0, len(every) - int(n_long / LONG_SHARE))
    dropped = set(
        np.random.default_rng(SEED)
        .choice(short, size=min(surplus, len(short)), replace=False)
        .tolist()
    )
    entry["items"] = {i: h for i, h in entry["items"].items() if i not in dropped}
    reason = f"length balance: a short prompt left out so that {LONG_SHARE:.0%} are long"
    entry["removed_items"].update({i: reason for i in sorted(dropped)})
    entry["size"] = len(entry["items"])
    report.kept[BALANCED] = entry["size"]
    report.removed[BALANCED]["length balance"] = len(dropped)
    entry["removed"] = dict(sorted(report.removed[BALANCED].items()))
    total = len(every) - len(dropped)
    return {
        "tokenizer": TOKENIZER,
        "long_tokens": LONG_TOKENS,
        "long_share": round(n_long / total, 4),
        "long_share_before": round(n_long / len(every), 4),
        "source": BALANCED,
        "short_left_out": len(dropped),
        "seed": SEED,
    }


def build(
    count_tokens: Callable[[str], int],
    out: Path | None = None,
    evaluation_sources: tuple[str, ...] = EVALUATION_SOURCES,
    progress: Callable[[str], None] | None = None,
) -> BuildReport:
    """Write `manifest.json` of `builtin:benign` under ``out`` (default: the package's data).

    ``count_tokens(text)`` counts tokens with `TOKENIZER`'s tokenizer (for the length balance).
    """
    say = progress or (lambda message: None)
    out = Path(out or corpus.data_dir("benign"))
    screen = S.Screen(_texts(JAILBREAK_SOURCES, say), _texts(HARMFUL_SOURCES, say))
    evals = NearDuplicateIndex(THRESHOLD)
    for name, texts in _texts(evaluation_sources, say).items():
        for i, text in enumerate(texts):
            evals.add((name, i), text)
    seen, report, written = NearDuplicateIndex(THRESHOLD), BuildReport(Counter(), {}), []
    for source in SOURCES:
        say(f"screening {source.name}")
        items, removed = _select(source, screen, seen, evals, report)
        written.append(
            {
                "name": source.name,
                "kind": "benign",
                "role": "train",
                "reader": source.reader,
                "package": pinned(people.READERS[source.reader][1]),
                "licence": source.licence,
                "written_by": source.written_by,
                "description": source.description,
                "known_biases": source.biases,
                "size": len(items),
                "removed": dict(sorted(report.removed[source.name].items())),
                "items": items,
                "removed_items": removed,
            }
        )
    meta = {
        "corpus": "benign",
        "sources": written,
        "screen": {
            "near_jaccard": S.NEAR,
            "min_words": S.MIN_WORDS,
            "english_ascii_share": S.ENGLISH,
            "jailbreak_sources": list(JAILBREAK_SOURCES),
            "harmful_sources": list(HARMFUL_SOURCES),
        },
        "dedup": {
            "normalise": "NFKC, case-folded, words only",
            "ngram": NGRAM,
            "jaccard_threshold": THRESHOLD,
            "within": "every source against the sources before it, in manifest order",
            "evaluation_sources": list(evaluation_sources),
        },
    }
    meta["length_balance"] = _balance(written, report, count_tokens, say)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8")
    corpus.clear()
    return report
