"""--engine ray on a local cluster of 2 CPU workers equals --engine local (float64), also when a
worker dies; for extraction and attention maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jbtrace.errors import UserError
from jbtrace.trace import attention, runs, store
from jbtrace.trace.engine import Engine, ModelSpec, extract_models
from jbtrace.trace.extract import ExtractOptions
from tests.conftest import BENIGN, JAILBREAK, make_set

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

MODELS = [ModelSpec("tiny:llama", dtype="float64"), ModelSpec("tiny:gptj", dtype="float64")]
OPTIONS = ExtractOptions(stats=("log_norm", "cos_prev"), batch_size=2)
SETS = [make_set("benign", BENIGN), make_set("jailbreak", JAILBREAK)]
OTHER_SETS = [
    make_set("short", [t for t in BENIGN + JAILBREAK if len(t) < 60]),
    make_set("long", [t for t in BENIGN + JAILBREAK if len(t) >= 60]),
]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def build(sets, engine, checkpoint=None):
    return store.build(extract_models(MODELS, sets, OPTIONS, engine, checkpoint), sets)


@pytest.fixture(scope="module")
def local():
    """The local engine's store for each prompt pair (computed once per module)."""
    cache = {}

    def get(sets):
        key = tuple(p.name for p in sets)
        if key not in cache:
            cache[key] = build(sets, Engine("local"))
        return cache[key]

    return get


def assert_equal(a, b):
    """Counts and lengths identical; moments equal up to float64 rounding (merge order differs)."""
    for var in ("count", "nonfinite", "prompt_tokens", "prompt_truncated", "prompt_index"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    for var in ("mean", "var", "prompt_value", "prompt_slope"):
        np.testing.assert_allclose(
            a[var].values, b[var].values, rtol=1e-12, atol=1e-13, err_msg=var
        )
    provenance = [json.loads(ds.attrs["provenance"]) for ds in (a, b)]
    keys = ("chat_template", "max_tokens", "padding_side", "align", "bins", "statistics")
    assert [{k: p[k] for k in keys} for p in provenance[:1]] == [
        {k: p[k] for k in keys} for p in provenance[1:]
    ]  # e.g. the chat template as resolved for each model, not as asked
    models = [{m: v["chat_template"] for m, v in p["models"].items()} for p in provenance]
    assert models[0] == models[1]


@pytest.mark.parametrize("sets", [SETS, OTHER_SETS], ids=["benign-jailbreak", "short-long"])
def test_ray_equals_local(sets, local):
    assert_equal(build(sets, Engine("ray", workers=2, shards=3)), local(sets))


def test_a_worker_killed_mid_shard_is_retried(local, tmp_path, monkeypatch):
    once = tmp_path / "killed"
    monkeypatch.setenv(
        "JBTRACE_TEST_KILL_WORKER", "batch:2"
    )  # SIGKILL in the worker at its 2nd batch ...
    monkeypatch.setenv(
        "JBTRACE_TEST_KILL_ONCE", str(once)
    )  # ... once: the restarted worker goes on
    assert_equal(build(SETS, Engine("ray", workers=2, shards=3)), local(SETS))
    assert once.exists()  # a worker did die


def test_finished_shards_are_checkpointed_and_not_run_again(tmp_path, monkeypatch):
    checkpoint = runs.prepare(tmp_path / "run", "extract", {"ray": 1})
    first = build(SETS, Engine("ray", workers=2, shards=2), checkpoint)
    assert len(list(checkpoint.root.glob("*shard-*-of-2.safetensors"))) == 4  # 2 models x 2 shards
    # any worker started now would die at every batch, so only the checkpoint can finish this run
    monkeypatch.setenv("JBTRACE_TEST_KILL_WORKER", "batch:1")
    again = build(
        SETS,
        Engine("ray", workers=2, shards=2),
        runs.prepare(tmp_path / "run", "extract", {"ray": 1}),
    )
    assert_equal(again, first)
    for var in ("mean", "var", "prompt_value", "prompt_slope"):
        np.testing.assert_array_equal(again[var].values, first[var].values)


def assert_same_maps(a, b):
    """Counts identical; float64 sums equal up to rounding (shards add in another order)."""
    assert a.model.name == b.model.name and a.layers == b.layers and a.heads == b.heads
    assert a.divergence == pytest.approx(b.divergence, rel=1e-12)
    for name in a.sums:
        np.testing.assert_array_equal(a.counts[name].numpy(), b.counts[name].numpy())
        np.testing.assert_allclose(
            a.sums[name].numpy(), b.sums[name].numpy(), rtol=1e-12, atol=1e-15
        )


def test_ray_attention_equals_local(tmp_path):
    """--layer auto --heads all: both passes (ranking, then the top layer's heads) on Ray;
    each finished shard of each pass is checkpointed."""
    kwargs = dict(layers="auto", heads="all", options=ExtractOptions(batch_size=2))
    local = attention.run(tmp_path / "local", MODELS, SETS, engine=Engine("local"), **kwargs)
    checkpoint = runs.prepare(tmp_path / "ray", "attention", {"ray": 1})
    saved = []
    save = checkpoint.save
    checkpoint.save = lambda key, *state: (saved.append(key), save(key, *state))
    engine = Engine("ray", workers=2, shards=3)
    on_ray = attention.run(
        tmp_path / "ray", MODELS, SETS, engine=engine, checkpoint=checkpoint, **kwargs
    )
    for a, b in zip(local, on_ray, strict=True):
        assert_same_maps(a, b)
    assert sorted(saved) == sorted(
        f"{m.spec}/{tag}/shard-{k}-of-3"
        for m in MODELS
        for tag in ("rank", "maps")
        for k in range(3)
    )
    a, b = store.open_run(tmp_path / "local"), store.open_run(tmp_path / "ray")
    np.testing.assert_array_equal(a["attn_count"].values, b["attn_count"].values)
    np.testing.assert_allclose(a["attn_mean"].values, b["attn_mean"].values, rtol=1e-12)


def test_a_user_error_in_a_worker_stays_one_line(tmp_path):
    engine = Engine("ray", workers=2, shards=2)
    with pytest.raises(UserError, match=r"^--heads 9: llama has 4 heads \(0\.\.3\)$"):
        attention.run(tmp_path / "run", MODELS[:1], SETS, layers=[2], heads=9, engine=engine)
