"""kill -9 of an extraction (or attention), then the same command: equal to one run, bit for bit.

Each interrupted run is a real subprocess killed with SIGKILL, at a point named by
JBTRACE_TEST_KILL (see trace.hooks): after a batch, in the middle of a checkpoint write
(temporary file written, not renamed), between the store's two publishing renames,
and once from outside at a moment the test does not choose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from jbtrace.trace import store
from tests.conftest import BENIGN, JAILBREAK

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VARS = (
    "mean",
    "var",
    "count",
    "nonfinite",
    "prompt_value",
    "prompt_slope",
    "prompt_tokens",
    "prompt_truncated",
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    (root / "benign.txt").write_text("\n".join(BENIGN + [t + " Please." for t in BENIGN]) + "\n")
    (root / "jailbreak.txt").write_text(
        "\n".join(JAILBREAK + [t + " Now." for t in JAILBREAK]) + "\n"
    )
    return root


def command(files, out, *extra):
    return [
        sys.executable,
        "-m",
        "jbtrace",
        "extract",
        "-m",
        "tiny:llama",
        "-m",
        "tiny:gptj",
        "--dtype",
        "float64",
        "-p",
        f"benign={files / 'benign.txt'}",
        "-p",
        f"jailbreak={files / 'jailbreak.txt'}",
        "--stat",
        "log_norm",
        "--stat",
        "cos_prev",
        "--batch-size",
        "2",
        "-q",
        "-o",
        str(out),
        *extra,
    ]


def env(**extra):
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "JBTRACE_CHECKPOINT_SECONDS": "0",
        **extra,
    }


def run(cmd, **extra):
    return subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=300)


def load(out) -> xr.Dataset:
    return store.open_run(out)


def assert_identical(a: xr.Dataset, b: xr.Dataset):
    for var in VARS:
        np.testing.assert_array_equal(
            a[var].values, b[var].values, err_msg=var
        )  # NaNs equal, floats bit for bit
    for coord in ("model", "scenario", "prompt_index", "prompt_scenario"):
        np.testing.assert_array_equal(a[coord].values, b[coord].values)
    pa, pb = store.provenance(a), store.provenance(b)
    assert pa["models"] == pb["models"]  # padding waste and truncation counts too


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    done = run(command(files, out))
    assert done.returncode == 0, done.stderr
    return load(out)


# (point, occurrence): batches are counted over both models and both sets
# (7 + 5 per model at batch size 2)
KILLS = [
    ("batch", 9),
    ("batch", 20),
    ("checkpoint-write", 3),
    ("checkpoint-write", 14),
    ("publish", 1),
]


@pytest.mark.parametrize("point,nth", KILLS)
def test_killed_then_rerun_equals_uninterrupted(files, reference, tmp_path, point, nth):
    out = tmp_path / "run"
    killed = run(command(files, out), JBTRACE_TEST_KILL=f"{point}:{nth}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert store.store_path(out) is None  # nothing that looks finished
    assert not (out / "run.json").exists()
    if point == "checkpoint-write":  # the temporary file is there, half-published state is not read
        assert list((out / ".checkpoint" / "extract").glob(".*.tmp"))
    resumed = run(command(files, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(load(out), reference)
    assert not (out / ".checkpoint").exists()  # published, then the checkpoint is gone


def test_resume_skips_the_work_already_done(files, tmp_path):
    """The rerun restores the saved states: it folds only the remaining batches (batch hook)."""
    out = tmp_path / "run"
    assert run(command(files, out), JBTRACE_TEST_KILL="batch:13").returncode == -signal.SIGKILL
    saved = json.loads((out / ".checkpoint" / "extract" / "fingerprint.json").read_text())
    assert saved["models"][0]["spec"] == "tiny:llama"
    # llama's 12 batches are saved; the rerun reaches gptj's 12 batches only,
    # so batch 13 is never reached
    resumed = run(command(files, out), JBTRACE_TEST_KILL="batch:13")
    assert resumed.returncode == 0, resumed.stderr


def test_killed_from_outside_at_an_unchosen_moment(files, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        command(files, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    states = out / ".checkpoint" / "extract"
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and not list(states.glob("gptj_*.safetensors"))
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run(command(files, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(load(out), reference)


def test_killed_between_publishing_renames_keeps_the_old_store(tmp_path, reference):
    """store.write over a store, killed after the old one is renamed aside: read, then replaced."""
    run_dir = tmp_path / "run"
    store.write(reference.isel(prompt=slice(0, 3)), run_dir)
    script = (
        "import sys; from jbtrace.trace import store; "
        "store.write(store.open_run(sys.argv[1]).isel(prompt=slice(0, 2)), sys.argv[1])"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], env=env(JBTRACE_TEST_KILL="publish-swap:1")
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / store.STORE).exists() and (run_dir / store.OLD_STORE).is_dir()
    assert load(run_dir).sizes["prompt"] == 3  # the old store, complete
    store.write(reference.isel(prompt=slice(0, 4)), run_dir)
    assert load(run_dir).sizes["prompt"] == 4 and not (run_dir / store.OLD_STORE).exists()


def attention_command(files, out):
    sets = ["-p", f"benign={files / 'benign.txt'}", "-p", f"jailbreak={files / 'jailbreak.txt'}"]
    models = ["-m", "tiny:llama", "-m", "tiny:gptj", "--dtype", "float64"]
    return [sys.executable, "-m", "jbtrace", "attention", *models, *sets, "--layer", "auto"] + [
        "--batch-size",
        "2",
        "-q",
        "-o",
        str(out),
    ]


@pytest.fixture(scope="module")
def attention_reference(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "ref"
    done = run(attention_command(files, out))
    assert done.returncode == 0, done.stderr
    return load(out)


# batches: 7 + 5 per model at batch size 2; batch 9 is llama's jailbreak set, 17 gptj's
ATTENTION_KILLS = [("checkpoint-write", 1), ("checkpoint-write", 2), ("batch", 9), ("batch", 17)]


@pytest.mark.parametrize("point,nth", ATTENTION_KILLS)
def test_attention_killed_then_rerun_equals_uninterrupted(
    files, attention_reference, tmp_path, point, nth
):
    """kill -9 of attention after a batch or while a state is saved: the rerun is bit-identical."""
    out = tmp_path / "run"
    killed = run(attention_command(files, out), JBTRACE_TEST_KILL=f"{point}:{nth}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run(attention_command(files, out))
    assert done.returncode == 0, done.stderr
    a, b = attention_reference, load(out)
    for var in ("attn_mean", "attn_count", "attn_divergence"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_attention_resume_skips_the_batches_already_done(files, tmp_path):
    """Killed at llama's 10th batch (9 saved): the rerun folds the other 3 + gptj's 12 only."""
    out = tmp_path / "run"
    killed = run(attention_command(files, out), JBTRACE_TEST_KILL="batch:10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((out / ".checkpoint" / "attention").glob("llama_rank_*.safetensors"))) == 2
    resumed = run(attention_command(files, out), JBTRACE_TEST_KILL="batch:16")
    assert resumed.returncode == 0, resumed.stderr
