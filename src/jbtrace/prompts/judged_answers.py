"""Judged answers as prompt sources: the one writer and reader of ``RUN/outcomes.jsonl``.

``jbtrace outcomes`` records, per prompt, the model's answer and the judges' verdicts, and
sorts the prompt into one of three labels: ``refused`` (the refusal judge fired),
``complied`` (no refusal, and every other judge passed: the answer addresses the request and
is not degenerate) or ``other`` (no refusal, but off-topic or degenerate). The source
``outcomes:RUN:LABEL[:SET]`` gives back the prompts of RUN with that label, optionally only
those of prompt set SET, in the order they were run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jbtrace import publish
from jbtrace.errors import UserError

FILE = "outcomes.jsonl"
LABELS = ("complied", "refused", "other")
PREFIX = "outcomes:"


@dataclass(frozen=True)
class Outcome:
    """One prompt's answer and how it was judged."""

    set: str
    source: str
    prompt: str
    response: str
    label: str  # one of LABELS
    verdicts: dict = field(default_factory=dict)  # judge name -> its verdict (JSON value)
    new_tokens: int = 0
    finished: bool = False  # the model ended its answer (EOS) before the token limit
    behaviour: str | None = None  # the harmful behaviour the prompt carries, where known

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"outcome label {self.label!r} is not one of {LABELS}")


def write_outcomes(outcomes: list[Outcome], path: str | Path) -> Path:
    """Write one JSON object per line, to a temporary name first."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for o in outcomes:
            f.write(json.dumps(asdict(o), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_outcomes(run: str | Path) -> list[Outcome]:
    """The outcomes of a run directory (or of an outcomes.jsonl file), in the order written."""
    run = Path(run).expanduser()
    path = run if run.suffix == ".jsonl" else run / FILE
    publish.recover(path.parent)  # a publish a kill interrupted is finished first
    if not path.is_file():
        raise UserError(
            f"{run}: no {FILE} here;"
            f" write one with `jbtrace outcomes -m MODEL -p NAME=SOURCE -o {run}`"
        )
    outcomes = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            outcomes.append(Outcome(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UserError(
                f"{path}: line {i} is not an outcome record ({str(e).splitlines()[0]})"
            ) from None
    return outcomes


def parse_source(source: str) -> tuple[str, str, str | None]:
    """``outcomes:RUN:LABEL[:SET]`` -> (RUN, LABEL, SET or None)."""
    parts = source.removeprefix(PREFIX).split(":")
    if len(parts) >= 2 and parts[-1] in LABELS:
        run, label, name = ":".join(parts[:-1]), parts[-1], None
    elif len(parts) >= 3 and parts[-2] in LABELS:
        run, label, name = ":".join(parts[:-2]), parts[-2], parts[-1]
    else:
        raise UserError(
            f"{source}: expected outcomes:RUN:LABEL or outcomes:RUN:LABEL:SET,"
            f" LABEL one of {', '.join(LABELS)}"
        )
    if not run or name == "":
        raise UserError(f"{source}: the run directory and the set name may not be empty")
    return run, label, name


def load_source(source: str) -> tuple[list[str], dict]:
    """The prompts of an ``outcomes:`` source and what was selected (a prompts loader)."""
    run, label, name = parse_source(source)
    outcomes = read_outcomes(run)
    sets = list(dict.fromkeys(o.set for o in outcomes))
    if name is not None and name not in sets:
        raise UserError(f"{source}: {run} has no prompt set {name!r}; it has: {', '.join(sets)}")
    pool = [o for o in outcomes if name is None or o.set == name]
    texts = [o.prompt for o in pool if o.label == label]
    if not texts:
        counts = ", ".join(
            f"{n} {lab}" for lab in LABELS if (n := sum(o.label == lab for o in pool))
        )
        raise UserError(f"{source}: no prompt was judged {label} ({counts or 'no outcomes'})")
    return texts, {"run": str(run), "label": label, "set": name, "of": len(pool)}
