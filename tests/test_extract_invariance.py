"""The store does not depend on how prompts were batched, padded, ordered or sharded."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jbtrace.models import load_model
from jbtrace.models.tokens import plan_batches
from jbtrace.trace import store
from jbtrace.trace.extract import ExtractOptions, extract, positions

STATS = ("log_norm", "cos_prev", "max_abs")


@pytest.fixture(scope="module", params=["llama", "gptj", "mamba2"])
def lm64(request):
    """float64, so that differences in kernel shapes (batch width) stay far below 1e-9."""
    return load_model(f"tiny:{request.param}", dtype="float64")


def run(lm, prompt_sets, **kw):
    options = ExtractOptions(stats=STATS, **kw)
    return store.build([extract(lm, prompt_sets, options)], prompt_sets)


def assert_same(a: xr.Dataset, b: xr.Dataset, tol=1e-9):
    np.testing.assert_array_equal(a["count"].values, b["count"].values)
    for var in ("mean", "var", "prompt_value", "prompt_slope"):
        x, y = a[var].values, b[var].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        ok = ~np.isnan(x)
        assert np.abs(x[ok] - y[ok]).max() <= tol, var
    np.testing.assert_array_equal(a["prompt_tokens"].values, b["prompt_tokens"].values)


@pytest.mark.parametrize(
    "variant",
    [
        dict(batch_size=7),
        dict(padding_side="left"),
        dict(bucket=False, batch_size=3),
        dict(padding_side="left", batch_size=2),
    ],
)
def test_batching_padding_and_bucketing_do_not_matter(lm64, prompt_sets, variant):
    reference = run(lm64, prompt_sets, batch_size=1)
    assert_same(reference, run(lm64, prompt_sets, **variant))


def test_relative_alignment_does_not_depend_on_batching(lm64, prompt_sets):
    reference = run(lm64, prompt_sets, batch_size=1, align="relative", bins=8)
    assert_same(
        reference,
        run(lm64, prompt_sets, batch_size=7, padding_side="left", align="relative", bins=8),
    )


def test_two_merged_shards_equal_one_run(lm64, prompt_sets, tmp_path):
    whole = run(lm64, prompt_sets, batch_size=3)
    for k in range(2):
        store.write(run(lm64, prompt_sets, batch_size=3, shard=(k, 2)), tmp_path / f"s{k}")
    merged = store.merge([store.open_run(tmp_path / f"s{k}") for k in range(2)])
    assert_same(whole, merged)
    np.testing.assert_array_equal(merged["prompt_index"].values, whole["prompt_index"].values)
    np.testing.assert_array_equal(merged["prompt_scenario"].values, whole["prompt_scenario"].values)


def test_store_round_trip_is_exact(lm64, prompt_sets, tmp_path):
    ds = run(lm64, prompt_sets)
    store.write(ds, tmp_path)
    back = xr.open_zarr(tmp_path / "trace.zarr").load()
    assert_same(ds, back, tol=0)
    assert back["mean"].dims == ("model", "scenario", "stat", "layer", "position")
    assert store.provenance(back)["prompt_sets"][0]["sha256"] == prompt_sets[0].sha256


def test_plan_batches_bucket_by_length_and_cover_every_prompt():
    lengths = np.array([5, 300, 7, 290, 6, 310, 8])
    options = ExtractOptions(batch_size=3)
    batches = plan_batches(lengths, options)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [sorted(lengths[b].tolist()) for b in batches] == [[290, 300, 310], [6, 7, 8], [5]]
    budget = plan_batches(lengths, ExtractOptions(batch_size=8, max_batch_tokens=620))
    assert all(len(b) * lengths[b].max() <= 620 or len(b) == 1 for b in budget)


def test_positions_ignore_padding():
    import torch

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert positions(mask, "start", 5).tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, 3, -1]]
    assert positions(mask, "end", 5).tolist() == [[-1, -1, 2, 1, 0], [3, 2, 1, 0, -1]]
    assert positions(mask, "relative", 2).tolist() == [[-1, -1, 0, 0, 1], [0, 0, 1, 1, -1]]


def test_nonfinite_values_are_counted_not_averaged(prompt_sets):
    from jbtrace.models import surgery

    lm = load_model("tiny:llama")
    clean = run(lm, prompt_sets, batch_size=1)

    def poison(module, args, output):  # an fp16-style overflow at the first token of every prompt
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[:, 0, 0] = float("inf")
        return output

    handle = surgery.blocks(lm.model)[4].register_forward_hook(poison)  # block 5 = layer 5
    try:
        poisoned = run(lm, prompt_sets, batch_size=1)
    finally:
        handle.remove()
    bad, count = poisoned["nonfinite"], poisoned["count"]
    n_prompts = len(prompt_sets[0]) + len(prompt_sets[1])
    assert int(bad.sel(stat="log_norm", layer=5, position=0).sum()) == n_prompts
    assert int(bad.sel(layer=slice(0, 4)).sum()) == 0  # nothing before the overflow
    # every value is either averaged or counted as non-finite, never both, never dropped
    np.testing.assert_array_equal((count + bad).values, clean["count"].values)
    # a cell whose every value overflowed has no mean, not an average that includes inf
    assert poisoned["mean"].sel(stat="log_norm", layer=5, position=0).isnull().all()
    assert np.isfinite(poisoned["mean"].values[count.values > 0]).all()


def test_chat_template_wraps_every_prompt(prompt_sets):
    from jbtrace.errors import UserError
    from jbtrace.models.tokens import encode

    lm = load_model("tiny:llama")
    options = ExtractOptions(chat_template=True)
    with pytest.raises(UserError, match="chat template"):
        encode(lm, ["hi"], options)
    lm.tokenizer.chat_template = (
        "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} [assistant]{% endif %}"
    )
    ids, truncated = encode(lm, ["hi there"], options)
    expected = lm.tokenizer("[user] hi there [assistant]")["input_ids"]  # adds the BOS itself
    assert ids[0] == expected and not truncated.any()
    trace = extract(lm, prompt_sets[:1], options)
    longest = max(len(encode(lm, [t], options)[0][0]) for t in prompt_sets[0].texts)
    assert trace.scenarios["benign"].prompt_tokens.max() == longest


@pytest.mark.parametrize(
    "spec", ["tiny:gptj", "builtin:minilm"]
)  # minilm keeps [SEP] at the end when cutting
def test_truncation_is_counted(prompt_sets, spec):
    lm = load_model(spec)
    trace = extract(lm, prompt_sets, ExtractOptions(max_tokens=8))
    st = trace.scenarios["jailbreak"]
    assert st.prompt_tokens.max() == 8
    full = [len(lm.tokenizer(t)["input_ids"]) for t in prompt_sets[1].texts]
    np.testing.assert_array_equal(st.truncated, np.array(full) > 8)
    assert trace.n_positions == 8
