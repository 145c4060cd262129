"""Runs that cannot mix: merge refuses other runs' shards, attention other inputs; --overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jbtrace.errors import UserError
from jbtrace.models import load_model
from jbtrace.trace import attention, runs, store
from jbtrace.trace.checkpoint import Checkpoint
from jbtrace.trace.engine import ModelSpec
from jbtrace.trace.extract import ExtractOptions, extract
from tests import test_cli
from tests.conftest import BENIGN, JAILBREAK, make_set
from tests.test_cli import jbtrace

files = test_cli.files  # the fixture


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny:llama", dtype="float64")


def shard_store(lm, sets, k, n, **kw):
    options = ExtractOptions(batch_size=4, shard=(k, n), **kw)
    return store.build([extract(lm, sets, options)], sets, extra={"seed": 0, "limit": None})


def test_merge_needs_each_shard_once(llama, prompt_sets):
    s0, s1 = (shard_store(llama, prompt_sets, k, 2) for k in range(2))
    with pytest.raises(UserError, match="repeated: 0/2; missing: 1/2"):
        store.merge([s0, s0])
    whole = shard_store(llama, prompt_sets, 0, 1)
    with pytest.raises(UserError, match="repeated: 0/1"):
        store.merge([whole, whole])
    with pytest.raises(UserError, match="split in different ways"):
        store.merge([s0, whole])
    relabelled = s0.copy()
    relabelled.attrs = {
        **s0.attrs,
        "provenance": json.dumps({**store.provenance(s0), "shard": [1, 2]}),
    }
    with pytest.raises(UserError, match="prompts appear in more than one run"):
        store.merge([s0, relabelled])
    merged = store.merge([s1, s0])  # any order
    assert int(merged["count"].sum()) == int(whole["count"].sum())
    assert store.provenance(merged)["shard"] == [0, 1]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(max_tokens=16), "max_tokens"),
        (dict(align="end"), "align"),
        (dict(stats=("rms",)), "statistics"),
        ("prompts", "prompt sets"),
    ],
)
def test_merge_refuses_shards_of_different_runs(llama, prompt_sets, change, message):
    s0 = shard_store(llama, prompt_sets, 0, 2)
    if change == "prompts":
        other = [make_set("benign", BENIGN[::-1]), make_set("jailbreak", JAILBREAK)]
        s1 = shard_store(llama, other, 1, 2)
    else:
        s1 = shard_store(llama, prompt_sets, 1, 2, **change)
    with pytest.raises(UserError, match=message):
        store.merge([s0, s1])


def test_merge_refuses_another_model_under_the_same_name(llama, prompt_sets):
    other = load_model("tiny:llama", dtype="float64", seed=1)
    s0, s1 = shard_store(llama, prompt_sets, 0, 2), shard_store(other, prompt_sets, 1, 2)
    with pytest.raises(UserError, match="models"):
        store.merge([s0, s1])


# ------------------------------------------------------------------ the CLI's run-directory rule


def test_existing_run_refused_then_overwrite_removes_every_derived_file(
    monkeypatch, capsys, files, tmp_path
):
    benign, jailbreak = files
    out = tmp_path / "run"
    sets = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    assert (
        jbtrace(monkeypatch, capsys, "extract", "-m", "tiny:llama", *sets, "-o", out, "-q")[0] == 0
    )
    derived = [
        "compare.json",
        "summary.md",
        "figure_significance.png",
        "profiles.pdf",
        "figure.png",
    ]
    for name in derived:  # what compare and plot leave next to the store
        (out / name).write_text("old")
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "extract", "-m", "tiny:gptj", *sets, "-o", out, "-q"
    )
    assert code == 2 and "already holds a finished run" in stderr and "--overwrite" in stderr
    assert list(store.open_run(out).model.values) == ["llama"]
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "extract", "-m", "tiny:gptj", *sets, "-o", out, "-q", "--overwrite"
    )
    assert code == 0, stderr
    assert list(store.open_run(out).model.values) == ["gptj"]
    assert not any((out / name).exists() for name in derived)
    assert sorted(p.name for p in out.iterdir()) == ["prompts.jsonl", "run.json", "trace.zarr"]


def test_partial_run_of_another_command_is_named(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "run"
    sets = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    # a partial extract of tiny:gptj with --max-tokens 32 (one saved state)
    partial = runs.fingerprint("extract", [{"spec": "tiny:gptj"}], [], max_tokens=32)
    Checkpoint(out, "extract", partial).save("gptj/benign", {"count": np.zeros(3)}, {})
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "extract", "-m", "tiny:llama", *sets, "-o", out, "-q"
    )
    assert code == 2 and "partial run of a different extract" in stderr
    assert "models" in stderr and "prompt set" in stderr and "--max-tokens" in stderr


def test_overwrite_never_removes_a_folder_that_is_not_a_run(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = [
        "extract",
        "-m",
        "tiny:llama",
        "-p",
        f"benign={benign}",
        "-p",
        f"jailbreak={jailbreak}",
        "-o",
        out,
        "-q",
    ]
    code, _, stderr = jbtrace(monkeypatch, capsys, *args)
    assert code == 2 and "not empty" in stderr
    code, _, stderr = jbtrace(monkeypatch, capsys, *args, "--overwrite")
    assert code == 2 and "not a jbtrace run" in stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_keeps_a_project_folder_and_the_users_files(monkeypatch, capsys, tmp_path):
    """Issue 25: -o "$PWD" --overwrite in a project with src/main.py and its own prompts.jsonl."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in BENIGN[:4])
    )
    (project / "jb.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in JAILBREAK[:4])
    )
    sets = ["-p", f"benign={project / 'prompts.jsonl'}", "-p", f"jailbreak={project / 'jb.jsonl'}"]
    args = ["extract", "-m", "tiny:llama", *sets, "--max-tokens", "32", "-q", "--overwrite"]
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    code, _, stderr = jbtrace(monkeypatch, capsys, *args, "-o", project)
    last = stderr.strip().splitlines()[-1]  # one line, after the prompt sets' notes
    assert code == 2 and "not a jbtrace run" in last and "another --out" in last
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
    # a real run is still replaced, and a file of the user's inside it is kept
    out = tmp_path / "run"
    assert jbtrace(monkeypatch, capsys, *args, "-o", out)[0] == 0
    assert json.loads((out / "run.json").read_text())["jbtrace"]["kind"] == "run"
    (out / "notes.txt").write_text("keep me")
    (out / "figure.png").write_text("old")
    code, _, stderr = jbtrace(monkeypatch, capsys, *args, "-o", out)
    assert code == 0, stderr
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "figure.png").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "prompts.jsonl",
        "run.json",
        "trace.zarr",
    ]


def test_attention_refuses_other_prompt_sets_and_models(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "run"
    sets = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    assert (
        jbtrace(monkeypatch, capsys, "extract", "-m", "tiny:llama", *sets, "-o", out, "-q")[0] == 0
    )
    before = store.open_run(out)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(BENIGN[:4]) + "\n")
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        "-m",
        "tiny:llama",
        "-p",
        f"benign={other}",
        "-p",
        f"jailbreak={jailbreak}",
        "--layer",
        "2",
        "-o",
        out,
        "-q",
    )
    assert code == 2 and "prompt set benign differs" in stderr
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "attention",
        "-m",
        "tiny:llama",
        "--dtype",
        "float64",
        *sets,
        "--layer",
        "2",
        "-o",
        out,
        "-q",
    )
    assert code == 2 and "model llama is not the model of that name" in stderr
    after = store.open_run(out)
    assert "attn_mean" not in after and after.identical(before)
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "attention", "-m", "tiny:llama", *sets, "--layer", "2", "-o", out, "-q"
    )
    assert code == 0, stderr
    assert "attn_mean" in store.open_run(out)


def test_attention_resumes_after_the_models_done(prompt_sets, tmp_path, monkeypatch):
    """A crash loading the second model: the rerun reuses the first's maps (none of its batches
    runs again), equal to one pass."""
    loads, batches, load, fail = [], [], ModelSpec.load, []

    def counted_load(spec):
        loads.append(spec.spec)
        if fail and spec.spec == "tiny:gptj":
            raise RuntimeError("preempted")
        return load(spec)

    begin = attention._MapReducer.begin
    monkeypatch.setattr(ModelSpec, "load", counted_load)
    monkeypatch.setattr(
        attention._MapReducer,
        "begin",
        lambda self, mask: (batches.append(loads[-1]), begin(self, mask)),
    )
    specs = [ModelSpec("tiny:llama", dtype="float64"), ModelSpec("tiny:gptj", dtype="float64")]
    options = ExtractOptions(batch_size=3)
    reference = attention.run(tmp_path / "ref", specs, prompt_sets, layers=[2], options=options)
    gptj_batches = batches.count("tiny:gptj")
    assert 0 < gptj_batches < len(batches)
    fingerprint = runs.fingerprint("attention", [], prompt_sets)
    fail.append(True)
    with pytest.raises(RuntimeError):
        attention.run(
            tmp_path / "run",
            specs,
            prompt_sets,
            layers=[2],
            options=options,
            checkpoint=runs.prepare(tmp_path / "run", "attention", fingerprint),
        )
    assert store.store_path(tmp_path / "run") is None
    for recorded in (loads, batches, fail):
        recorded.clear()
    resumed = attention.run(
        tmp_path / "run",
        specs,
        prompt_sets,
        layers=[2],
        options=options,
        checkpoint=runs.prepare(tmp_path / "run", "attention", fingerprint),
    )
    assert loads == ["tiny:llama", "tiny:gptj"] and batches == ["tiny:gptj"] * gptj_batches
    for a, b in zip(reference, resumed, strict=True):
        for name in a.sums:
            assert np.array_equal(a.sums[name].numpy(), b.sums[name].numpy())
            assert np.array_equal(a.counts[name].numpy(), b.counts[name].numpy())
    ref, out = store.open_run(tmp_path / "ref"), store.open_run(tmp_path / "run")
    assert ref["attn_mean"].identical(out["attn_mean"])
    assert not (tmp_path / "run" / ".checkpoint").exists()


def test_a_fingerprint_without_saved_state_is_replaced(tmp_path):
    """A command that stopped before saving any state does not claim the folder."""
    first = Checkpoint(tmp_path, "extract", {"a": 1})
    first.root.mkdir(parents=True)
    (first.root / "fingerprint.json").write_text(json.dumps({"a": 1}))
    assert first.saved_fingerprint() is None
    second = runs.prepare(tmp_path, "extract", {"b": 2})
    second.save("m/s", {"count": np.arange(3.0)}, {"batches_done": 1})
    assert second.saved_fingerprint() == {"b": 2}
    with pytest.raises(UserError, match="differs in: a, b"):
        runs.prepare(tmp_path, "extract", {"a": 1})
    arrays, meta = runs.prepare(tmp_path, "extract", {"b": 2}).load("m/s")
    assert np.array_equal(arrays["count"], np.arange(3.0)) and meta == {"batches_done": 1}
