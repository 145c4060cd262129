"""Answers kept on disk as they are generated, so that a killed `guard` or `outcomes` resumes.

One JSON-lines file per command (``RUN/.checkpoint/COMMAND/answers.jsonl``): the first line
holds the generation settings the answers depend on, then one line per answer, keyed by what
produced it (a guard mode, say) and the prompt. Each save replaces the file atomically. A file
written under other settings, or one this version cannot read, is ignored: the answers are
generated again. Greedy answers depend only on the prompt, the model and the settings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from jbtrace.trace import hooks
from jbtrace.trace.checkpoint import DIR, atomic_write

CHUNK = int(os.environ.get("JBTRACE_CHECKPOINT_PROMPTS", 32))  # prompts answered between saves


class Kept:
    """The answers of one command in one run, by (key, prompt)."""

    def __init__(self, run_dir: str | Path, command: str, config: dict):
        self.path = Path(run_dir) / DIR / command / "answers.jsonl"
        self.config = json.loads(json.dumps(config))  # as it reads back
        self.answers: dict[tuple[str, str], dict] = self._load()

    def _load(self) -> dict[tuple[str, str], dict]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if not lines or json.loads(lines[0]) != {"generation": self.config}:
                return {}
            rows = [json.loads(line) for line in lines[1:]]
            return {(r.get("key", ""), r["prompt"]): r["answer"] for r in rows}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # nothing kept, or a file this version cannot read: answer again

    def save(self) -> None:
        """Write every answer so far (atomically), then let tests kill here."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"generation": self.config})] + [
            json.dumps({"key": key, "prompt": prompt, "answer": answer}, ensure_ascii=False)
            for (key, prompt), answer in self.answers.items()
        ]
        atomic_write(self.path, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))
        hooks.reached("answers-saved")

    def missing(self, key: str, prompts) -> list[str]:
        """The prompts (in order, once each) with no answer under ``key`` yet."""
        return list(dict.fromkeys(p for p in prompts if (key, p) not in self.answers))

    def answer(self, key: str, prompts, generate) -> None:
        """Answer the missing prompts with ``generate(prompts) -> [answer dict]``, ``CHUNK`` at a
        time, saving after each chunk."""
        todo = self.missing(key, prompts)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            self.answers.update(((key, p), a) for p, a in zip(chunk, generate(chunk), strict=True))
            self.save()

    def forget(self) -> None:
        """Remove the kept answers (once the result that holds them is published)."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
        if self.path.parent.parent.is_dir() and not any(self.path.parent.parent.iterdir()):
            self.path.parent.parent.rmdir()
