"""`jbtrace attention` end to end: into an extract run's store, the figure, and one-line errors
with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

from jbtrace.trace import store
from tests.test_cli import files, jbtrace  # noqa: F401  (fixture and runner)


@pytest.mark.slow
def test_attention_writes_into_the_extract_run(monkeypatch, capsys, files, tmp_path):  # noqa: F811
    benign, jailbreak = files
    out = tmp_path / "run"
    prompts = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "extract",
        "-m",
        "tiny:llama",
        "-m",
        "builtin:minilm",
        *prompts,
        "--stat",
        "log_norm",
        "--stat",
        "attn_entropy",
        "--stat",
        "attn_sink",
        "-o",
        out,
        "-q",
    )
    assert code == 0, stderr
    code, stdout, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        "-m",
        "tiny:llama",
        "-m",
        "builtin:minilm",
        *prompts,
        "--layer",
        "auto",
        "-o",
        out,
        "-q",
        "--positions",
        "0:24",
    )
    assert code == 0, stderr
    assert "layers by JS divergence" in stdout
    for name in ("attention.png", "attention.pdf"):
        assert (out / name).is_file(), name
    ds = store.open_run(out)
    assert {"mean", "count", "attn_mean", "attn_count", "attn_divergence"} <= set(ds.data_vars)
    assert ds["attn_count"].dtype == np.int64 and ds["count"].dtype == np.int64
    # the grid's attention statistics: none at layer 0, one per real token at the others
    assert int(ds["count"].sel(model="llama", stat="attn_sink", layer=0).sum()) == 0
    assert (
        int(
            ds["count"].sel(model="llama", scenario="benign", stat="attn_sink", layer=1, position=0)
        )
        == 7
    )
    np.testing.assert_allclose(
        ds["mean"].sel(model="llama", stat="attn_sink", layer=5, position=0), 1.0, rtol=1e-6
    )
    # --layer auto kept the top-ranked layer of each model
    for model in ("llama", "minilm"):
        top = int(ds["attn_divergence"].sel(model=model).idxmax())
        assert int(ds["attn_count"].sel(model=model, attn_layer=top).sum()) > 0
    # a second call replaces the maps and keeps the grid
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        "-m",
        "tiny:llama",
        *prompts,
        "--layer",
        "3",
        "--heads",
        "all",
        "-o",
        out,
        "-q",
    )
    assert code == 0, stderr
    ds = store.open_run(out)
    assert list(ds["attn_layer"].values) == [3] and ds["attn_mean"].dims[3] == "head"
    assert "attn_divergence" not in ds and int(ds["attn_count"].sel(model="minilm").sum()) == 0
    assert "log_norm" in ds.stat.values


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "tiny:mamba2", "--layer", "1"], "not applicable: mamba2 has no attention"),
        (["-m", "tiny:llama", "--layer", "0"], "layer 0 is the embedding output"),
        (["-m", "tiny:llama", "--layer", "40"], "--layer 40: llama has attention at layers 1..32"),
        (["-m", "tiny:llama", "--heads", "9", "--layer", "2"], "--heads 9: llama has 4 heads"),
        (["-m", "tiny:llama", "--heads", "some"], "--heads 'some'"),
        (["-m", "tiny:llama", "--floor", "0"], "--floor 0.0"),
    ],
)
def test_user_errors_are_one_line(monkeypatch, capsys, files, tmp_path, args, message):  # noqa: F811
    benign, jailbreak = files
    out = tmp_path / "run"
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        *args,
        "-p",
        f"benign={benign}",
        "-p",
        f"jailbreak={jailbreak}",
        "-o",
        out,
        "-q",
    )
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("jbtrace: error:") and message in last, stderr
    assert "Traceback" not in stderr and not (out / "trace.zarr").exists()


def test_a_model_missing_from_the_run_is_refused(monkeypatch, capsys, files, tmp_path):  # noqa: F811
    benign, jailbreak = files
    out = tmp_path / "run"
    prompts = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    assert (
        jbtrace(monkeypatch, capsys, "extract", "-m", "tiny:llama", *prompts, "-o", out, "-q")[0]
        == 0
    )
    before = store.open_run(out)
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        "-m",
        "tiny:gptj",
        *prompts,
        "--layer",
        "2",
        "-o",
        out,
        "-q",
    )
    assert code == 2 and "model gptj is not in" in stderr
    assert store.open_run(out).identical(before)
