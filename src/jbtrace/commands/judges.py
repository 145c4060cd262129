"""judges validate: score each judge and the one verdict on people's labels, write
OUT/judges.json|md (`jbtrace judges validate`)."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ValidateRun:
    """What `validate_run` did: the validation and the files written."""

    result: dict
    paths: list[Path]


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def validate_run(
    out_dir: Path = Path("runs/judges"),
    data: Path | None = None,
    *,
    seed: int = 0,
    command: str = "",
) -> ValidateRun:
    """The whole of `jbtrace judges validate`: pyrit's people-labelled sets (or ``data``, a
    JSON-lines file of prompt/response/label), MiniLM similarities, out-of-fold scores."""
    from jbtrace.defend import validation as VAL
    from jbtrace.defend.judges import OnTopic
    from jbtrace.prompts.packages import pinned
    from jbtrace.views.judges_md import judges_markdown, targets

    started = time.perf_counter()
    rows = VAL.user_labels(data) if data is not None else VAL.pyrit_labels()
    similarity = OnTopic().similarity([r.prompt for r in rows], [r.response for r in rows])
    result = VAL.validate(rows, similarity, seed)
    result["targets"] = targets(result["verdicts"])
    result["labels"] = str(data) if data is not None else f"{pinned('pyrit')} scorer_evals"
    result["command"] = command or "jbtrace judges validate"
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _write(out_dir / "judges.json", json.dumps(result, indent=1) + "\n"),
        _write(out_dir / "judges.md", judges_markdown(result)),
    ]
    return ValidateRun(result, paths)
