"""`jbtrace compare RUN` end to end, and its user errors."""

from __future__ import annotations

import json

import xarray as xr

from tests.test_cli import files, jbtrace  # noqa: F401  (fixture)


def test_compare_writes_outputs_and_prints_observations(monkeypatch, capsys, files, tmp_path):  # noqa: F811
    benign, jailbreak = files
    out = tmp_path / "run"
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "extract",
        "-m",
        "tiny:gptj",
        "-p",
        f"benign={benign}",
        "-p",
        f"jailbreak={jailbreak}",
        "-o",
        out,
        "-q",
    )
    assert code == 0, stderr
    code, stdout, stderr = jbtrace(
        monkeypatch,
        capsys,
        "compare",
        out,
        "--permutations",
        "200",
        "--bootstrap",
        "50",
        "--match-length",
    )
    assert code == 0, stderr
    for name in (
        "compare.json",
        "summary.md",
        "figure_significance.png",
        "figure_significance.pdf",
        "profiles.png",
        "profiles.pdf",
    ):
        assert (out / name).exists(), name
    data = json.loads((out / "compare.json").read_text())
    assert data["params"]["n_permutations"] == 200 and data["params"]["match_length"] is True
    observations = data["models"]["gptj"]["observations"]
    assert observations and all(line in stdout for line in observations[:2])
    ds = xr.open_zarr(out / "trace.zarr")
    assert {"diff", "g", "ci_low", "ci_high", "p", "q", "significant"} <= set(ds.data_vars)


def test_compare_user_errors(monkeypatch, capsys, files, tmp_path):  # noqa: F811
    code, _, stderr = jbtrace(monkeypatch, capsys, "compare", tmp_path / "nothing")
    assert code == 2 and "trace.zarr" in stderr and "Traceback" not in stderr
    benign, _ = files
    out = tmp_path / "one"
    assert (
        jbtrace(
            monkeypatch,
            capsys,
            "extract",
            "-m",
            "tiny:gptj",
            "-p",
            f"benign={benign}",
            "-o",
            out,
            "-q",
        )[0]
        == 0
    )
    code, _, stderr = jbtrace(monkeypatch, capsys, "compare", out)
    assert code == 2 and "one scenario" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (out / "compare.json").exists()
    code, _, stderr = jbtrace(monkeypatch, capsys, "compare", out, "--q", "2")
    assert code == 2 and "--q" in stderr


def test_compare_refuses_unbalanced_non_finite_exclusion(monkeypatch, capsys, tmp_path):
    from jbtrace.trace import store
    from tests.test_compare import _overflowed

    store.write(_overflowed(2, 9), tmp_path)
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "compare", tmp_path, "--permutations", "50", "--bootstrap", "20"
    )
    assert code == 2 and "non-finite" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "compare.json").exists()
    code, stdout, stderr = jbtrace(
        monkeypatch,
        capsys,
        "compare",
        tmp_path,
        "--permutations",
        "50",
        "--bootstrap",
        "20",
        "--max-excluded-gap",
        "0.5",
    )
    assert code == 0, stderr
    assert "2 of 20 benign and 9 of 20 jailbreak prompts are excluded" in stdout.replace("\n", " ")
    assert json.loads((tmp_path / "compare.json").read_text())["params"]["max_excluded_gap"] == 0.5
