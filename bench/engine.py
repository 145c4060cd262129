"""--engine ray with N CPU workers against --engine local on the same prompts: throughput ratio,
overhead per shard.

Both engines run the same extraction (model load included: each Ray worker loads its own
replica) over two synthetic sets of n/2 prompts. The local cluster is started once
before the timed runs (its start is reported on its own). Ray runs with S and 4·S
shards; the overhead per shard is the time difference divided by the extra shards
(each shard is one actor call: serialising the prompt sets, tokenizing, returning and
merging its exact state). The stores are checked equal (max |difference| of the means).

    python bench/engine.py                                   # tiny:llama, 256 prompts, 2 workers
    python bench/engine.py --prompts 1024 --workers 2 --max-tokens 128 --repeats 3
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
    parser.add_argument("--prompts", type=int, default=256, help="total over the two sets")
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
    few, many = args.workers, 4 * args.workers
    runs = {"local": [], f"ray-{few}-shards": [], f"ray-{many}-shards": []}
    stores = {}
    for _ in range(
        args.repeats
    ):  # interleaved, so that a burst of load on the shared machine hits all three
        for label, engine in (
            ("local", Engine("local")),
            (f"ray-{few}-shards", Engine("ray", workers=args.workers, shards=few)),
            (f"ray-{many}-shards", Engine("ray", workers=args.workers, shards=many)),
        ):
            seconds, traces = timed(engine)
            runs[label].append(seconds)
            stores[label] = store.build(traces, sets)
            tokens = sum(int(s.prompt_tokens.sum()) for s in traces[0].scenarios.values())
            print(f"{label}: {seconds:.2f} s", flush=True)
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
        "repeats": args.repeats,
        "cluster_start_s": round(cluster_start, 2),
        "seconds": runs,
        "median_s": med,
        "prompts_per_s": {k: round(args.prompts / v, 2) for k, v in med.items()},
        "throughput_ratio_ray_to_local": {
            k: round(med["local"] / v, 3) for k, v in med.items() if k != "local"
        },
        "overhead_per_shard_s": round(
            (med[f"ray-{many}-shards"] - med[f"ray-{few}-shards"]) / (many - few), 3
        ),
        "max_abs_mean_difference_vs_local": diff,
        "loadavg_1min_at_end": os.getloadavg()[0],
    }
    common.write_json(args.out, result)
    for key in (
        "cluster_start_s",
        "median_s",
        "prompts_per_s",
        "throughput_ratio_ray_to_local",
        "overhead_per_shard_s",
        "max_abs_mean_difference_vs_local",
    ):
        print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
