"""What scale-out buys: --engine ray with N workers of one thread each against one worker of one
thread, and both against --engine local with one thread, on the same prompts.

Every configuration runs the same extraction (model load included: each Ray worker loads its
own replica) over two synthetic sets of n/2 prompts, every thread count fixed at 1, so the
scale-out ratio (1 worker's time / N workers' time; the goal is ≥ 0.9·N) measures the workers,
not a difference in threads. Ray's start-up cost is reported twice: the cluster's start (once,
before the timed runs) and what one Ray worker costs over the local run doing the same work
(actor start, model load in the worker, shipping the prompts and states). Runs are
interleaved so that a burst of load on a shared machine hits all of them; the load average is
recorded. The stores are checked equal (max |difference| of the means).

    python bench/engine.py                                   # tiny:llama, 8192 prompts, 2 workers
    python bench/engine.py --prompts 2048 --workers 2 --max-tokens 128 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--prompts", type=int, default=8192, help="total over the two sets")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-words", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "engine.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    common.set_threads(1)

    import numpy as np
    import ray

    from jbtrace.prompts import PromptSet, texts_sha256
    from jbtrace.trace import store
    from jbtrace.trace.engine import Engine, ModelSpec, extract_models
    from jbtrace.trace.extract import ExtractOptions

    sets = []
    for k, name in enumerate(("benign", "jailbreak")):
        texts = common.synthetic_texts(args.prompts // 2, args.max_words, args.seed + k)
        sets.append(
            PromptSet(
                name=name,
                texts=tuple(texts),
                source="synthetic",
                sha256=texts_sha256(texts),
                info={},
            )
        )
    options = ExtractOptions(max_tokens=args.max_tokens)
    models = [ModelSpec(args.model)]
    tokens = None

    def timed(engine):
        start = time.perf_counter()
        traces = extract_models(models, sets, options, engine)
        return time.perf_counter() - start, traces

    info = common.machine_info(1)
    start = time.perf_counter()
    ray.init(
        num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    cluster_start = time.perf_counter() - start
    shards, one, many = 4 * args.workers, "ray-1-worker", f"ray-{args.workers}-workers"
    configurations = (
        ("local", Engine("local")),
        (one, Engine("ray", workers=1, shards=shards)),
        (many, Engine("ray", workers=args.workers, shards=shards)),
    )
    runs = {label: [] for label, _ in configurations}
    stores, load = {}, [os.getloadavg()[0]]
    for _ in range(args.repeats):  # interleaved: a burst of load hits every configuration
        for label, engine in configurations:
            seconds, traces = timed(engine)
            runs[label].append(seconds)
            stores[label] = store.build(traces, sets)
            tokens = sum(int(s.prompt_tokens.sum()) for s in traces[0].scenarios.values())
            print(f"{label}: {seconds:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    ray.shutdown()
    diff = max(
        float(np.nanmax(np.abs(stores["local"]["mean"].values - s["mean"].values)))
        for s in stores.values()
    )
    med = {k: common.median(v) for k, v in runs.items()}
    result = {
        "machine": info,
        "model": args.model,
        "prompts": args.prompts,
        "real_tokens": tokens,
        "max_tokens": args.max_tokens,
        "workers": args.workers,
        "shards": shards,
        "threads_per_worker": 1,
        "repeats": args.repeats,
        "cluster_start_s": round(cluster_start, 2),
        "seconds": runs,
        "median_s": med,
        "prompts_per_s": {k: round(args.prompts / v, 2) for k, v in med.items()},
        "throughput_ratio_ray_to_local": {
            k: round(med["local"] / v, 3) for k, v in med.items() if k != "local"
        },
        "scale_out_ratio": round(med[one] / med[many], 3),
        "scale_out_goal": round(0.9 * args.workers, 2),
        "ray_worker_overhead_s": round(med[one] - med["local"], 2),
        "max_abs_mean_difference_vs_local": diff,
        "loadavg_1min": load,
    }
    common.write_json(args.out, result)
    for key in (
        "cluster_start_s",
        "median_s",
        "prompts_per_s",
        "throughput_ratio_ray_to_local",
        "scale_out_ratio",
        "ray_worker_overhead_s",
        "max_abs_mean_difference_vs_local",
    ):
        print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
