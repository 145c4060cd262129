"""Peak memory of `jbtrace attention` stays flat as the number of prompts grows.

Each (mode, prompt count) runs in a fresh subprocess: load tiny:llama, warm up, reset
the process's peak RSS (Linux /proc/self/clear_refs), map the attention of one layer
over N prompts of a fixed length, then read the peak RSS (VmHWM) and report its
growth over the RSS before the run. Two modes side by side:

- capture: jbtrace's capture (sdpa kept, probabilities of the mapped layer reduced per batch
  into fixed sums);
- naive: eager attention with output_attentions=True, each prompt's map of that layer kept,
  averaged at the end.

On CUDA (``--device cuda``) torch.cuda.max_memory_allocated is reported as well.
Prints a table and writes bench/results/attention_memory.json.

    python bench/attention_memory.py [--counts 50 200 800] [--tokens 64] [--layer 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "attention_memory.json"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _prompts(n: int, tokens: int, seed: int = 0) -> list[str]:
    """n distinct prompts of ``tokens`` words: just long enough (a word is one token or more) to
    be cut to ``tokens``."""
    import numpy as np

    from jbtrace.prompts import load_prompts

    words = np.array(" ".join(load_prompts("benign", "builtin:benign").texts).split())
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, tokens)) for _ in range(n)]


def child(n: int, mode: str, tokens: int, layer: int, device: str) -> dict:
    import torch

    from jbtrace.models import load_model
    from jbtrace.prompts import PromptSet, texts_sha256
    from jbtrace.trace import attention
    from jbtrace.trace.extract import ExtractOptions, encode

    def make_set(name, texts):
        return PromptSet(
            name=name, texts=tuple(texts), source="bench", sha256=texts_sha256(texts), info={}
        )

    options = ExtractOptions(max_tokens=tokens, batch_size=8)
    lm = load_model(
        "tiny:llama", device=device, attn_implementation="eager" if mode == "naive" else None
    )
    sets = [
        make_set("benign", _prompts(n, tokens, 1)),
        make_set("jailbreak", _prompts(n, tokens, 2)),
    ]
    warm = [
        make_set("benign", _prompts(8, tokens, 3)),
        make_set("jailbreak", _prompts(8, tokens, 4)),
    ]
    lengths = {len(ids) for s in sets for ids in encode(lm, s.texts, options)[0]}
    assert lengths == {tokens}, f"prompts not all {tokens} tokens: {sorted(lengths)[:5]}"

    def run(prompt_sets):
        if mode == "capture":
            maps = attention.collect(lm, prompt_sets, [layer], "mean", options)
            return {k: maps.mean(k) for k in maps.sums}
        means = {}
        for ps in (
            prompt_sets
        ):  # what one would write with output_attentions: keep every prompt's map, average later
            kept = []
            for i in range(0, len(ps.texts), options.batch_size):
                enc = lm.tokenizer(
                    list(ps.texts[i : i + options.batch_size]),
                    return_tensors="pt",
                    truncation=True,
                    max_length=tokens,
                    padding=True,
                ).to(lm.device)
                with torch.inference_mode():
                    out = lm.model(**enc, output_attentions=True)
                kept.extend(out.attentions[layer - 1].mean(1).cpu())
            means[ps.name] = torch.stack(kept).double().mean(0)
        return means

    run(warm)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    run(sets)
    seconds = time.perf_counter() - start
    result = {
        "mode": mode,
        "prompts_per_set": n,
        "tokens": tokens,
        "layer": layer,
        "device": device,
        "rss_before_mb": before / 1024,
        "peak_rss_growth_mb": (_rss_kb("VmHWM") - before) / 1024,
        "seconds": round(seconds, 2),
    }
    if device.startswith("cuda"):
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["capture", "naive"])
    parser.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(int(args.child[0]), args.child[1], args.tokens, args.layer, args.device)
            )
        )
        return
    rows = []
    for mode in args.modes:
        for n in args.counts:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(n),
                mode,
                "--tokens",
                str(args.tokens),
                "--layer",
                str(args.layer),
                "--device",
                args.device,
            ]
            done = subprocess.run(
                cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent
            )
            if done.returncode:
                sys.exit(f"{mode} {n}: child failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"{'mode':8} {'prompts/set':>11} {'peak RSS growth MB':>19} "
        f"{'ratio to smallest':>18} {'seconds':>8}"
        + ("  cuda peak MB" if args.device.startswith("cuda") else "")
    )
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        base = max(
            mine[0]["peak_rss_growth_mb"], 1.0
        )  # growth below 1 MB is noise; ratios against at least 1 MB
        for r in mine:
            r["ratio_to_smallest"] = round(max(r["peak_rss_growth_mb"], 1.0) / base, 2)
            extra = f"  {r['cuda_peak_allocated_mb']:.1f}" if "cuda_peak_allocated_mb" in r else ""
            print(
                f"{mode:8} {r['prompts_per_set']:>11} {r['peak_rss_growth_mb']:>19.1f} "
                f"{r['ratio_to_smallest']:>18.2f} "
                f"{r['seconds']:>8.1f}{extra}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2)
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
