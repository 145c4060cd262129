"""Where named prompt sources come from: jbtrace's benign corpus, package files, the HF hub.

Package data is read as files from the installed distribution; the packages are never
imported (they pin old dependencies and are slow to import). Each loader returns the raw
texts and what it knows about them; `jbtrace.prompts.sets` cleans them into a `PromptSet`.
The named sources themselves (jailbreak families, harmful requests, evaluation-only
benchmarks) are listed in `jbtrace.prompts.catalog`.
"""

from __future__ import annotations

from pathlib import Path

from jbtrace.errors import UserError
from jbtrace.prompts import corpus
from jbtrace.prompts.files import READERS, Records, pick_field, record_texts


def records_of(path: Path, source: str) -> Records:
    return READERS[path.suffix](path.read_bytes(), f"{source} ({path})")


def builtin_benign(source: str, seed: int) -> tuple[list[str], dict]:
    """`builtin:benign[:SOURCE]` (people's requests) or `builtin:benign-synthetic[:SOURCE]`."""
    parts = source.split(":")
    name = parts[1]
    sub = parts[2] if len(parts) >= 3 else None
    if sub == "":
        raise UserError(
            f"{source}: give a source after 'builtin:{name}:';"
            f" known: {', '.join(corpus.source_names(name))}"
        )
    rows = corpus.corpus(sub, name)
    fields = ("licence", "package", "written_by", "role")
    provenance = {r["source"]: {k: r[k] for k in fields if k in r} for r in rows}
    return [r["text"] for r in rows], {
        "labels": [r["source"] for r in rows],
        "licences": {k: v.get("licence") for k, v in provenance.items()},
        "provenance": provenance,
    }


def load_hf(source: str, text_field: str | None) -> tuple[list[str], dict]:
    name, _, split = source.removeprefix("hf:").partition(":")
    split = split or "train"
    if not name:
        raise UserError(f"{source}: give a dataset name, as in hf:NAME or hf:NAME:split")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{source}: hf: sources need the datasets package: pip install datasets"
        ) from None
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise UserError(
            f"{source}: could not load dataset {name!r} (split {split!r}):"
            f" not available offline or not found ({type(e).__name__});"
            " save it as a .jsonl/.csv/.parquet file and pass that path instead"
        ) from None
    used = pick_field(data.column_names, text_field, source)
    texts, _ = record_texts([(f"row {i}", v) for i, v in enumerate(data[used], 1)], None, source)
    return texts, {"text_field": used, "split": split}
