"""Benchmark CPFeatures' torch CP-ALS against tensorly's default numpy `parafac`.

Same tensor, rank, SVD init and number of sweeps (tol=0) for every method; "ALS s" repeats
the fit from a random init, timing the sweeps without the SVD initialisation. Each
measurement runs in a fresh subprocess: time is wall-clock of the fit call after a small
warm-up; memory is the process's peak RSS during the call minus its RSS at the start
(VmHWM after resetting it), i.e. extra memory above the loaded input and libraries
(CUDA: peak allocated device memory instead).

    python bench/detect.py --prompts 100 300 1000 --out bench/results/detect.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(n, positions, hidden, rank, seed=0):
    """Residual-stream-like prompts: low-rank signal, two prompt classes, smooth position
    profiles, a few outlier hidden dims, noise, and zero padding after each prompt's length."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    A = rng.standard_normal((n, rank)) + np.outer(y, np.linspace(2, 0, rank))
    t = np.linspace(0, 1, positions)[:, None]
    P = np.cos(np.pi * t * np.arange(1, rank + 1)) + 0.1 * rng.standard_normal((positions, rank))
    H = rng.standard_normal((hidden, rank))
    H[rng.choice(hidden, 4, replace=False)] *= 10
    X = np.einsum("ir,jr,kr->ijk", A, P, H)
    X += 0.5 * X.std() * rng.standard_normal(X.shape)
    lengths = rng.integers(positions // 4, positions + 1, n)
    X[np.arange(positions)[None, :] >= lengths[:, None]] = 0
    return X.astype(np.float32)


def method_fn(method, args, init="svd"):
    """A callable that fits X and returns a callable giving the relative error (untimed)."""
    if method == "tensorly":
        import tensorly as tl
        from tensorly.decomposition import parafac

        def run(X):
            cp = parafac(X, args.rank, n_iter_max=args.iters, init=init, tol=0, random_state=0)
            return lambda: float(np.linalg.norm(X - tl.cp_to_tensor(cp)) / np.linalg.norm(X))

        return run
    from jbtrace.detect.decompose import CPFeatures

    kw = dict(
        rank=args.rank,
        n_iter_max=args.iters,
        tol=0,
        init=init,
        project_dim=args.project_dim if method.endswith("proj") else None,
        device="cuda" if method.startswith("cuda") else "cpu",
    )

    def run(X):
        fit = CPFeatures(**kw).fit(X)  # includes its own (exact) error computation
        return lambda: fit.reconstruction_error_

    return run


def proc_status_bytes(field):
    """A memory line of /proc/self/status (Linux), in bytes."""
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss():
    """Reset this process's peak RSS to its current RSS; return the baseline to subtract.

    ru_maxrss is useless here: it survives fork+exec, so a child starts with its parent's
    peak. VmHWM is per address space, and writing 5 to clear_refs resets it (Linux >= 4.0).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status_bytes("VmRSS")
    except OSError:  # cannot reset: growth of the peak since exec
        return proc_status_bytes("VmHWM")


def child(args):
    """One measurement in this fresh process; prints a JSON line."""
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    X = np.load(args.data)
    run, als = method_fn(args.child, args), method_fn(args.child, args, "random")
    run(X[:16, :16])  # warm-up: thread pools, kernels
    cuda = args.child.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = reset_peak_rss()
    t0 = time.perf_counter()
    error = run(X)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else proc_status_bytes("VmHWM") - rss0
    t0 = time.perf_counter()
    als(X)  # random init: the same sweeps without the SVD initialisation
    print(
        json.dumps(
            {
                "seconds": seconds,
                "als_s": time.perf_counter() - t0,
                "peak_mb": peak / 2**20,
                "rel_error": error(),
            }
        )
    )


def measure(method, data, args):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--data",
        str(data),
        "--rank",
        str(args.rank),
        "--iters",
        str(args.iters),
        "--project-dim",
        str(args.project_dim),
        "--threads",
        str(args.threads or 0),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarise(n, runs):
    """Medians per method; speed-up and error agreement against tensorly."""
    row = {"prompts": n, "loadavg_1min": os.getloadavg()[0], "methods": {}}
    for m, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "als_s", "peak_mb")}
        row["methods"][m] = {
            "seconds": [r["seconds"] for r in rs],
            "median_s": med["seconds"],
            "als_s": med["als_s"],
            "peak_mb": med["peak_mb"],
            "rel_error": rs[0]["rel_error"],
        }
    ref = row["methods"]["tensorly"]
    for m, got in row["methods"].items():
        got["speedup_vs_tensorly"] = ref["median_s"] / got["median_s"]
        got["als_speedup_vs_tensorly"] = ref["als_s"] / got["als_s"]
        if not m.endswith("proj"):  # proj decomposes a different (projected) tensor
            got["error_within_1pct"] = abs(got["rel_error"] / ref["rel_error"] - 1) <= 0.01
    return row


def machine_info():
    import tensorly
    import torch
    from threadpoolctl import threadpool_info

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "tensorly": tensorly.__version__,
        "default_torch_threads": torch.get_num_threads(),
        "default_blas_threads": [(p["internal_api"], p["num_threads"]) for p in threadpool_info()],
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--project-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and BLAS in every method (default: each library's own)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", type=Path, default=Path("bench/results/detect.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    import torch

    methods = ["tensorly", "torch", "torch_proj"]
    if args.device == "cuda":
        if torch.cuda.is_available():
            methods += ["cuda", "cuda_proj"]
        else:
            print("no CUDA device: GPU section skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.prompts:
            data = Path(tmp) / f"x{n}.npy"
            np.save(data, synthetic(n, args.positions, args.hidden, args.rank))
            runs = {m: [] for m in methods}
            for _ in range(args.repeats):  # alternate methods within each repeat
                for m in methods:
                    runs[m].append(measure(m, data, args))
            row = summarise(n, runs)
            rows.append(row)
            print_row(row, methods, header=len(rows) == 1)

    result = {
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k not in ("child", "data", "out")},
        "measures": "median wall s of fit (svd init); als_s: same sweeps from a random "
        "init (no SVD); peak_mb = peak RSS during fit minus RSS before "
        "(CUDA: max_memory_allocated); rel_error = ||X - CP||/||X|| "
        "(proj: of the projected tensor)",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def print_row(row, methods, header):
    if header:
        print(
            f"{'prompts':>7} {'method':<11} {'fit s':>8} {'speedup':>7} {'ALS s':>8} "
            f"{'speedup':>7} {'rel err':>8} {'err vs tl':>9} {'peak MB':>7}"
        )
    ref = row["methods"]["tensorly"]["rel_error"]
    for m in methods:
        r = row["methods"][m]
        vs = "(proj)" if m.endswith("proj") else f"{100 * (r['rel_error'] / ref - 1):+.3f}%"
        print(
            f"{row['prompts']:>7} {m:<11} {r['median_s']:>8.3f} "
            f"{r['speedup_vs_tensorly']:>6.1f}x {r['als_s']:>8.3f} "
            f"{r['als_speedup_vs_tensorly']:>6.1f}x {r['rel_error']:>8.5f} {vs:>9} "
            f"{r['peak_mb']:>7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
