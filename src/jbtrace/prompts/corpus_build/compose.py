"""Seeded composition of jbtrace's own benign prompts from hand-written components.

Each `data/compose/SOURCE.yaml` is a small grammar written for this project: `templates`
with `{slot}` references, `slots` (name -> options) and `domains` (a topic with its own
slots, which win over the shared ones, and optional `variants`: slot sets of which one is
drawn per prompt, so that a project's details stay together). A prompt picks a domain (and
variant), then a template, then expands slots recursively with one seeded generator:

- `{name}`       one option (memoised: the same slot says the same thing within one prompt)
- `{name*2-4}`   2 to 4 distinct options, one per line as "- item"
- `{name#3-6}`   3 to 6 distinct options, numbered "1. item"
- `{name+2-3}`   2 to 3 distinct options joined by spaces (sentences)
- `{name,2-3}`   2 to 3 distinct options joined as "a, b and c"

A grammar's `paired` lists slots drawn with one index (a task and the snippet it is
about), so their option lists must be equally long. Composition is deterministic for a given
seed and grammar; the frozen corpus files are its output (after de-duplication), and a test
rebuilds them to check.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import numpy as np

SLOT = re.compile(r"\{([a-z_]+)(?:([*#+,])(\d+)-(\d+))?\}")
MAX_DEPTH = 12


def grammar_files() -> dict[str, Path]:
    """source name -> its grammar file under data/compose/."""
    folder = Path(str(importlib.resources.files("jbtrace.prompts") / "data" / "compose"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _join(items: list[str], how: str) -> str:
    if how == "*":
        return "\n".join(f"- {x}" for x in items)
    if how == "#":
        return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    if how == "+":
        return " ".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Expander:
    def __init__(self, slots: dict, rng: np.random.Generator, paired: list[list[str]]):
        self.slots, self.rng, self.memo, self.index = slots, rng, {}, {}
        self.group = {name: tuple(names) for names in paired for name in names}

    def options(self, name: str) -> list[str]:
        if name not in self.slots:
            raise KeyError(f"grammar has no slot {name!r}")
        return self.slots[name]

    def expand(self, text: str, depth: int = 0) -> str:
        if depth > MAX_DEPTH:
            raise RecursionError(f"slots nest deeper than {MAX_DEPTH}: {text[:60]!r}")
        return SLOT.sub(lambda m: self._fill(m, depth), text.rstrip())

    def _fill(self, m: re.Match, depth: int) -> str:
        name, how, lo, hi = m.groups()
        if how is None and name in self.memo:
            return self.memo[name]
        options = self.options(name)
        if how is None:
            group = self.group.get(name, name)
            if group not in self.index:
                self.index[group] = int(self.rng.integers(len(options)))
            self.memo[name] = self.expand(options[self.index[group]], depth + 1)
            return self.memo[name]
        k = min(int(self.rng.integers(int(lo), int(hi) + 1)), len(options))
        picked = self.rng.choice(len(options), size=k, replace=False)
        return _join([self.expand(options[i], depth + 1) for i in picked], how)


def compose(grammar: dict, count: int, seed: int, given: list[dict] | None = None) -> list[dict]:
    """`count` prompts from `grammar`: dicts with text, category and domain (duplicates possible).

    `given` (one dict per prompt, then `count` is its length) fixes slots to literal text
    that is inserted as it is, never expanded (a passage may contain braces).
    """
    rng = np.random.default_rng(seed)
    count = len(given) if given is not None else count
    shared = grammar.get("slots") or {}
    domains = grammar.get("domains") or [{"name": "general", "slots": {}}]
    templates = grammar["templates"]
    rows = []
    for i in range(count):
        domain = domains[rng.integers(len(domains))]
        template = templates[rng.integers(len(templates))]
        slots = {**shared, **(domain.get("slots") or {})}
        if domain.get("variants"):
            slots.update(domain["variants"][rng.integers(len(domain["variants"]))])
        expander = _Expander(slots, rng, grammar.get("paired") or [])
        expander.memo.update(given[i] if given is not None else {})
        text = expander.expand(template)
        text = re.sub(r"[ \t]+\n", "\n", re.sub(r"\n{3,}", "\n\n", text)).strip()
        rows.append({"text": text, "category": grammar["category"], "domain": domain["name"]})
    return rows


def load_grammar(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))
