"""Helpers shared by bench/extract.py and bench/scale.py: machine facts, memory, JSON, workloads."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info(threads: int) -> dict:
    """What the numbers were measured on."""
    import torch
    import transformers

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_1min_at_start": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for tool in ("transformer_lens", "nnsight"):
        try:
            from importlib import metadata

            info[tool] = metadata.version(tool.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed is a fact to record
            info[tool] = None
    return info


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0 keeps torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- memory


def _status_mib(field: str) -> float:
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> dict:
    """Reset this process's peak RSS (VmHWM) to its current RSS, and the CUDA peak; return the
    baselines.

    ru_maxrss cannot be reset and is inherited across exec, so it is not used.
    """
    import torch

    baseline = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline["cuda_baseline_mib"] = torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline["rss_baseline_mib"] = _status_mib("VmRSS")
    return baseline


def peak_since(baseline: dict) -> dict:
    """Growth of the peak RSS, and of the peak CUDA allocation, above the baselines (MiB)."""
    import torch

    out = dict(baseline, peak_rss_mib=_status_mib("VmHWM") - baseline["rss_baseline_mib"])
    if "cuda_baseline_mib" in baseline:
        torch.cuda.synchronize()
        out["peak_cuda_mib"] = (
            torch.cuda.max_memory_allocated() / 2**20 - baseline["cuda_baseline_mib"]
        )
    return out


def run_child(script: str, args: list[str]) -> dict:
    """Run ``script --child ...`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- results


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so an interrupted run never leaves a half file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- workloads


def synthetic_texts(n: int, max_words: int, seed: int, min_words: int = 4) -> list[str]:
    """n prompts cut from the built-in benign corpus, word counts uniform in [min_words, max_words].

    Distinct windows of real text, so the tiny tokenizer sees ordinary words and the token
    lengths spread up to (and, with max_tokens, are cut at) the limit.
    """
    from jbtrace.prompts import load_prompts

    words = " ".join(load_prompts("corpus", "builtin:benign").texts).split()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        start = int(rng.integers(0, max(len(words) - k, 1)))
        out.append(" ".join(words[start : start + k]))
    return out


def llama8b_random(device: str = "cuda"):
    """A LoadedModel with Llama-3.1-8B's shapes, random weights, bfloat16, built directly on the
    device.

    No download: the config is written out here, and the tiny stand-ins' tokenizer is used
    (its ids are valid in the 128,256-token vocabulary). Needs a CUDA device.
    """
    import torch
    import transformers as T

    from jbtrace.models import LoadedModel, surgery
    from jbtrace.models.builtin import tiny_tokenizer

    config = T.LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = T.LlamaForCausalLM._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    model.eval()
    tok = tiny_tokenizer()
    return LoadedModel(
        name="llama8b-random",
        spec="llama8b-random",
        model=model,
        tokenizer=tok,
        n_layers=33,
        has_attention=True,
        is_causal=True,
        random_init=True,
        max_positions=131072,
        layer_map=surgery.layer_map_text(model),
        provenance={"spec": "llama8b-random", "dtype": "bfloat16", "device": device},
    )
