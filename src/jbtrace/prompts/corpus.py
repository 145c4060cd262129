"""The builtin benign corpus, as shipped: several sources, each prompt with its source and licence.

`data/benign/manifest.json` lists the sources (licence, kind, description, size) and how the
corpus was de-duplicated; `data/benign/SOURCE.jsonl` holds each source's prompts. This module
only reads them; `jbtrace.prompts.corpus_build` writes them (the runtime never imports it).
"""

from __future__ import annotations

import importlib.resources
import json
from functools import cache, lru_cache
from pathlib import Path

from jbtrace.errors import UserError


def data_dir() -> Path:
    return Path(str(importlib.resources.files("jbtrace.prompts") / "data" / "benign"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    path = data_dir() / "manifest.json"
    if not path.is_file():
        raise UserError(
            "builtin:benign: jbtrace's data/benign/manifest.json is missing; reinstall jbtrace"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def source_names() -> list[str]:
    return [s["name"] for s in manifest()["sources"]]


@cache
def rows(name: str) -> tuple[dict, ...]:
    """The prompts of one source: dicts with text, source, licence, category, origin or domain."""
    if name not in source_names():
        raise UserError(f"unknown benign source {name!r}; known: {', '.join(source_names())}")
    path = data_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise UserError(
            f"builtin:benign:{name}: its data file {path.name} is missing; reinstall jbtrace"
        )
    return tuple(
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    )


def corpus(name: str | None = None) -> list[dict]:
    """Every prompt of the corpus (in manifest order), or of source `name`."""
    names = [name] if name else source_names()
    return [row for n in names for row in rows(n)]
