"""Peak memory and time of jbtrace extraction as the number of prompts grows.

Each prompt count runs in a fresh subprocess: the model is loaded, the prompts are
built, the peak RSS is reset (/proc/self/clear_refs), then `jbtrace.extract` runs once
over two scenarios of n/2 prompts each. Reported: wall time, time per 1,000 real
tokens, and peak RSS growth above the loaded model and prompts. Flat memory and linear
time mean: peak MiB about constant, seconds per 1k tokens about constant.

    python bench/scale.py                                  # 100, 1,000, 5,000 prompts on tiny:llama
    python bench/scale.py --prompts 100 1000 --model tiny:gptj --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def child(args) -> None:
    from jbtrace.models import load_model
    from jbtrace.prompts import PromptSet, texts_sha256
    from jbtrace.trace.extract import ExtractOptions, extract

    lm = load_model(args.model, device=args.device)
    half = args.child // 2
    sets = []
    for k, name in enumerate(("benign", "jailbreak")):
        texts = common.synthetic_texts(half, args.max_words, args.seed + k)
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
    extract(
        lm,
        [
            PromptSet(
                name=s.name,
                texts=s.texts[:8],
                source="warm-up",
                sha256=texts_sha256(s.texts[:8]),
                info={},
            )
            for s in sets
        ],
        options,
    )  # warm-up: lazy allocations, thread pools
    baseline = common.reset_peak()
    t0 = time.perf_counter()
    trace = extract(lm, sets, options)
    seconds = time.perf_counter() - t0
    real = int(sum(s.prompt_tokens.sum() for s in trace.scenarios.values()))
    out = {
        "prompts": 2 * half,
        "seconds": seconds,
        "real_tokens": real,
        "s_per_1k_tokens": 1000 * seconds / real,
        "padding_waste": trace.padding_waste,
    }
    out.update(common.peak_since(baseline))
    print(json.dumps(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prompts",
        type=int,
        nargs="+",
        default=[100, 1000, 5000],
        help="total prompts (two scenarios)",
    )
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--max-words", type=int, default=60, help="synthetic prompts have 4..max-words words"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "scale.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    common.set_threads(args.threads)
    if args.child:
        return child(args)
    passed = [
        "--model",
        args.model,
        "--device",
        args.device,
        "--max-tokens",
        str(args.max_tokens),
        "--max-words",
        str(args.max_words),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    rows = []
    print(f"{args.model}, max_tokens {args.max_tokens}, {args.threads or 'default'} thread(s)")
    print(
        f"{'prompts':>8}{'real tokens':>13}{'seconds':>10}{'s / 1k tok':>12}"
        f"{'peak RSS MiB':>14}{'peak CUDA MiB':>15}"
    )
    for n in args.prompts:
        row = common.run_child(__file__, [*passed, "--child", str(n)])
        if "error" in row:
            raise SystemExit(f"bench/scale.py: {n} prompts failed: {row['error']}")
        rows.append(row)
        cuda = f"{row['peak_cuda_mib']:>15.1f}" if "peak_cuda_mib" in row else f"{'-':>15}"
        print(
            f"{row['prompts']:>8}{row['real_tokens']:>13}{row['seconds']:>10.2f}{row['s_per_1k_tokens']:>12.3f}"
            f"{row['peak_rss_mib']:>14.1f}{cuda}",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    summary = {
        "prompts_ratio": last["prompts"] / first["prompts"],
        "time_ratio": last["seconds"] / first["seconds"],
        "tokens_ratio": last["real_tokens"] / first["real_tokens"],
        "time_per_token_ratio": last["s_per_1k_tokens"] / first["s_per_1k_tokens"],
        "peak_rss_growth_mib": last["peak_rss_mib"] - first["peak_rss_mib"],
    }
    print(
        f"\n{summary['prompts_ratio']:.0f}x prompts ({summary['tokens_ratio']:.1f}x tokens): "
        f"{summary['time_ratio']:.1f}x time, "
        f"time per token x{summary['time_per_token_ratio']:.2f}, "
        f"peak RSS {summary['peak_rss_growth_mib']:+.1f} MiB"
    )
    common.write_json(
        args.out,
        {
            "machine": common.machine_info(args.threads),
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "summary": summary,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
