"""Where named prompt sources come from: jbtrace's benign corpus, package files, the HF hub.

Package data is read as files from the installed distribution; the packages are never
imported (they pin old dependencies and are slow to import). Each loader returns the raw
texts and what it knows about them; `jbtrace.prompts.sets` cleans them into a `PromptSet`.
The named sources themselves (jailbreak families, harmful requests, evaluation-only
benchmarks) are listed in `jbtrace.prompts.catalog`.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from jbtrace.errors import UserError
from jbtrace.prompts import corpus
from jbtrace.prompts.files import READERS, Records, pick_field, record_texts


def package_dir(dist_name: str, package: str) -> Path:
    """The installed folder of `package` (from distribution `dist_name`), without importing it."""
    hint = f"{dist_name} is not installed: pip install --no-deps {dist_name}"
    try:
        folder = Path(importlib.metadata.distribution(dist_name).locate_file(package))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(hint) from None
    if folder.is_dir():
        return folder
    for entry in sys.path:  # editable or unusual installs
        if entry and (Path(entry) / package).is_dir():
            return Path(entry) / package
    raise UserError(hint)


def package_file(dist_name: str, relative: str) -> Path:
    package, _, rest = relative.partition("/")
    path = package_dir(dist_name, package) / rest
    if not path.exists():
        version = importlib.metadata.version(dist_name)
        raise UserError(
            f"{dist_name} {version} has no {relative};"
            f" this source needs another {dist_name} version"
        )
    return path


def records_of(path: Path, source: str) -> Records:
    return READERS[path.suffix](path.read_bytes(), f"{source} ({path})")


def builtin_benign(source: str, seed: int) -> tuple[list[str], dict]:
    """`builtin:benign` (every source of the corpus) or `builtin:benign:SOURCE` (one of them)."""
    name = source.split(":", 2)[2] if source.count(":") >= 2 else None
    if name == "":
        raise UserError(
            f"{source}: give a benign source after 'builtin:benign:';"
            f" known: {', '.join(corpus.source_names())}"
        )
    rows = corpus.corpus(name)
    licences = {r["source"]: r["licence"] for r in rows}
    return [r["text"] for r in rows], {"labels": [r["source"] for r in rows], "licences": licences}


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
