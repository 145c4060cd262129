"""Detectors as evidence: `jbtrace detect` with its defaults on a real model, people's requests
against held-out jailbreak families, the recommended detector's outer numbers beside the best
text baseline's, and the FPR on every evaluation-only benign set.

Runs `commands.detect_run` (what `jbtrace detect` runs) and writes a summary to
bench/results/detect_<model>.json: settings, time and load average, per held-out jailbreak
family the outer TPR at the 1% FPR threshold, per held-out benign source the outer FPR, per
evaluation-only set the FPR at the chosen threshold, the same for the best text baseline, the
margin, and whether the targets of issue #23 are met (they are not tuned to).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/detect_evidence.py --model builtin:minilm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from jbtrace.commands import detect_options, detect_run
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.detect.ranking import to_dict

FAMILIES = ("inthewild", "pyrit", "autodan")
TARGETS = {"max_eval_fpr": 0.05, "min_family_tpr": 0.90, "min_margin": 0.10}


def _side(chosen: dict, side: str) -> dict:
    """Per outer split of one class: the winner on the rest and its rate on the split."""
    return {
        split: {
            "winner": e["winner"],
            "near_copies_out_of_training": e["near_copies_out_of_training"],
            **e[side],
        }
        for split, e in chosen["outer"]["splits"].items()
        if side in e
    }


def summary(c: dict) -> dict:
    return {
        "candidate": c["candidate"],
        "inner_selection": c["inner_selection"],
        "outer_tpr": c["outer"]["tpr"],
        "outer_fpr": c["outer"]["fpr"],
        "outer_tpr_per_family": _side(c, "jailbreak"),
        "outer_fpr_per_benign_source": _side(c, "benign"),
        "eval_fpr": {n: {k: e[k] for k in ("k", "n", "rate")} for n, e in c["eval_fpr"].items()},
        "worst_eval": c["worst_eval"],
    }


def targets(chosen: dict, margin: dict | None) -> dict:
    fams = [e["rate"] for e in chosen["outer_tpr_per_family"].values()]
    evals = [e["rate"] for e in chosen["eval_fpr"].values()]
    out = {
        "eval_fpr_at_most_5pct": bool(evals) and max(evals) <= TARGETS["max_eval_fpr"],
        "family_tpr_at_least_90pct": bool(fams) and min(fams) >= TARGETS["min_family_tpr"],
        "margin_at_least_10_points": margin is not None and margin["diff"] >= TARGETS["min_margin"],
    }
    return out | {"all": all(out.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--kind", action="append", default=None)
    ap.add_argument("--classifier", action="append", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    prompts = ("benign=builtin:benign",) + tuple(f"jb_{f}=builtin:jailbreak:{f}" for f in FAMILIES)
    options = detect_options(
        kind=args.kind, classifier=args.classifier, limit=args.limit, max_tokens=args.max_tokens
    )
    load, started = os.getloadavg(), time.perf_counter()
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        result = detect_run(
            PromptOptions(prompts=prompts, limit=args.limit),
            ModelOptions(model=(args.model,)),
            options,
            RunOptions(out_dir=Path(tmp) / "run"),
            eval_limit=args.eval_limit,
        )
    rep = to_dict(result.reports[0])
    chosen, base = summary(rep["chosen"]), summary(rep["best_baseline"])
    name = args.model.split(":")[-1]
    out = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python bench/detect_evidence.py "
        + " ".join(sys.argv[1:]),
        "detect": f"jbtrace detect -m {args.model} "
        + " ".join(f"-p {p}" for p in prompts)
        + f" --limit {args.limit} --eval-limit {args.eval_limit} --max-tokens {args.max_tokens}"
        + "".join(f" --kind {k}" for k in args.kind or ())
        + "".join(f" --classifier {c}" for c in args.classifier or ()),
        "model": args.model,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "platform": platform.platform(),
            "loadavg_at_start": load,
            "loadavg_at_end": os.getloadavg(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "protocol": rep["data"]["protocol"],
        "train_sets": {k: v["n"] for k, v in rep["data"]["train_sets"].items()},
        "candidates": len(rep["rows"]),
        "chosen": chosen,
        "best_baseline": base,
        "margin": rep["margin"],
        "targets": TARGETS,
        "targets_met": targets(chosen, rep["margin"]),
    }
    path = args.out or Path(f"bench/results/detect_{name}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} in {out['seconds']} s")


if __name__ == "__main__":
    main()
