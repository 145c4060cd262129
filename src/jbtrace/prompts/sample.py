"""RUN/prompts.jsonl: a small seeded sample of each set's texts (the store keeps numbers only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jbtrace.prompts.sets import PromptSet

FILE = "prompts.jsonl"


def write_sample(
    sets: list[PromptSet], run_dir: str | Path, per_set: int = 8, seed: int = 0
) -> Path:
    """Write up to ``per_set`` prompts of each set (seeded, in set order), one JSON row each."""
    rng = np.random.default_rng(seed)
    rows = []
    for ps in sets:
        chosen = sorted(rng.choice(len(ps), size=min(per_set, len(ps)), replace=False).tolist())
        rows += [
            {"set": ps.name, "source": ps.source, "index": i, **_provenance(ps, i), "text": t}
            for i, t in ((i, ps.texts[i]) for i in chosen)
        ]
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE}.tmp")
    tmp.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    os.replace(tmp, path)
    return path


def _provenance(ps: PromptSet, i: int) -> dict:
    """Where prompt ``i`` comes from: its corpus source's record, else the set's own."""
    if ps.groups and "provenance" in ps.info:
        origin = ps.groups[i]
        return {"origin": origin, **ps.info["provenance"].get(origin, {})}
    fields = ("role", "family", "licence", "package", "written_by")
    return {k: ps.info[k] for k in fields if k in ps.info}


def read_sample(run_dir: str | Path) -> dict[str, list[dict]]:
    """The sample written by ``write_sample``, grouped by set name (empty when the run has none)."""
    path = Path(run_dir) / FILE
    groups: dict[str, list[dict]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            groups.setdefault(row["set"], []).append(row)
    return groups
