"""Attention maps and capture agree with transformers' eager output_attentions; padding,
batching and causality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from jbtrace.models import load_model, surgery
from jbtrace.trace import attention, capture, runs
from jbtrace.trace.engine import ModelSpec
from jbtrace.trace.extract import ExtractOptions


def reference_maps(spec, texts, layers, heads):
    """Per-(query, key) sums and counts over prompts, from eager output_attentions run one
    prompt at a time."""
    lm = load_model(spec, attn_implementation="eager")
    n = max(len(lm.tokenizer(t)["input_ids"]) for t in texts)
    n_out = 1 if heads != "all" else lm.model.config.num_attention_heads
    sums, count = np.zeros((len(layers), n_out, n, n)), np.zeros((n, n))
    for text in texts:
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = lm.model(**enc, output_attentions=True)
        t = enc["input_ids"].shape[1]
        allowed = np.tril(np.ones((t, t), bool)) if lm.is_causal else np.ones((t, t), bool)
        count[:t, :t] += allowed
        for i, layer in enumerate(layers):
            probs = out.attentions[layer - 1][0].double().numpy()  # (heads, t, t)
            probs = (
                probs.mean(0, keepdims=True)
                if heads == "mean"
                else probs
                if heads == "all"
                else probs[heads : heads + 1]
            )
            sums[i, :, :t, :t] += np.where(allowed, probs, 0.0)
    return sums, count


def as_numpy(maps, scenario, n):
    return maps.sums[scenario].cpu().numpy()[..., :n, :n], maps.counts[scenario].cpu().numpy()[
        :n, :n
    ]


@pytest.mark.parametrize(
    "arch, heads", [("gptj", "all"), ("llama", "mean"), ("mistral", 1), ("minilm", "mean")]
)
def test_maps_agree_with_eager_output_attentions(arch, heads, model_dirs, prompt_sets):
    spec = "builtin:minilm" if arch == "minilm" else str(model_dirs[arch])
    lm = load_model(spec)  # sdpa: probabilities come from the capture, not from the kernel
    assert lm.model.config._attn_implementation == "sdpa"
    last = lm.n_layers - 1
    maps = attention.collect(lm, prompt_sets, [1, 3, last], heads, ExtractOptions(batch_size=3))
    for prompt_set in prompt_sets:
        ref_sums, ref_count = reference_maps(spec, prompt_set.texts, [1, 3, last], heads)
        sums, count = as_numpy(maps, prompt_set.name, ref_count.shape[0])
        np.testing.assert_array_equal(count, ref_count)
        assert (
            maps.counts[prompt_set.name].sum() == ref_count.sum()
        )  # nothing counted beyond the longest prompt
        seen = ref_count > 0
        mean = sums[..., seen] / count[seen]
        assert np.abs(mean - ref_sums[..., seen] / ref_count[seen]).max() <= 1e-5


def test_capture_equals_output_attentions_and_restores_the_model(prompt_sets):
    lm = load_model("tiny:llama")
    eager = load_model("tiny:llama", attn_implementation="eager")
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(list(prompt_sets[0].texts), return_tensors="pt", padding=True)
    got = {}
    with (
        capture.probabilities_hooked(
            lm.model, [2, 32], lambda layer, p: got.__setitem__(layer, p.clone())
        ),
        torch.no_grad(),
    ):
        lm.model(**enc)
    with torch.no_grad():
        ref = eager.model(**enc, output_attentions=True).attentions
    real = enc["attention_mask"].bool()
    both = (real[:, None, :, None] & real[:, None, None, :]).expand_as(ref[1])
    for layer in (2, 32):
        assert (got[layer] - ref[layer - 1]).abs()[both].max() <= 1e-5
    assert set(got) == {2, 32}
    module = surgery.attention_layers(lm.model)[2]
    assert module.config is lm.model.config and not hasattr(module, "_jbtrace_capture")


def test_padding_side_and_batch_size_give_the_same_maps(model_dirs, prompt_sets):
    lm = load_model(str(model_dirs["mistral"]))
    runs = [
        attention.collect(
            lm,
            prompt_sets,
            [2, 5],
            "mean",
            ExtractOptions(batch_size=b, padding_side=side, bucket=bucket),
        )
        for b, side, bucket in ((7, "right", True), (1, "left", True), (7, "left", False))
    ]
    for prompt_set in prompt_sets:
        first_sums, first_count = as_numpy(runs[0], prompt_set.name, None)
        assert first_count.sum() > 0
        for other in runs[1:]:
            sums, count = as_numpy(other, prompt_set.name, None)
            np.testing.assert_array_equal(count, first_count)
            assert np.abs(sums - first_sums).max() <= 1e-6


def test_causal_models_have_nothing_above_the_diagonal(prompt_sets):
    maps = attention.collect(
        load_model("tiny:gptj"), prompt_sets, [4], "mean", ExtractOptions(batch_size=4)
    )
    for scenario in ("benign", "jailbreak"):
        count = maps.counts[scenario].cpu().numpy()
        mean = maps.mean(scenario)[0, 0]
        upper = np.triu(np.ones_like(count, bool), k=1)
        assert count[upper].sum() == 0 and np.isnan(mean[upper]).all()
        lower = count > 0
        assert lower.sum() > 0 and np.isfinite(mean[lower]).all()
        # each query row is a distribution over the keys before it, so per-prompt rows sum to 1
        sums = maps.sums[scenario].cpu().numpy()[0, 0].sum(1)
        np.testing.assert_allclose(sums, count[:, 0], rtol=1e-6)
    dataset = attention.to_dataset([maps], prompt_sets)
    mean = dataset["attn_mean"].sel(model="gptj", scenario="jailbreak", attn_layer=4).values
    assert np.isnan(mean[np.triu_indices_from(mean, k=1)]).all()


def test_encoder_counts_every_real_pair(prompt_sets):
    maps = attention.collect(
        load_model("builtin:minilm"), prompt_sets, [2], "mean", ExtractOptions(batch_size=4)
    )
    count = maps.counts["benign"].cpu().numpy()
    assert count[0, 5] == count[5, 0] > 0  # bidirectional: keys after the query are counted


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 6)), rng.random((6, 6))
    count = np.tril(np.full((6, 6), 3))
    count[2, 1] = 0  # a key without data in one scenario is left out of its row
    expected = []
    for q in range(6):
        keys = count[q] >= 1
        expected.append(jensenshannon(a[q, keys], b[q, keys], base=2) ** 2)
    assert attention.js_divergence(a, b, count) == pytest.approx(np.mean(expected), rel=1e-9)
    assert attention.js_divergence(a, a, count) == pytest.approx(0.0, abs=1e-12)


def test_auto_ranks_every_layer_and_keeps_the_top(model_dirs, prompt_sets):
    lm = load_model("builtin:minilm")
    options = ExtractOptions(batch_size=4)
    auto = attention.collect(lm, prompt_sets, "auto", "mean", options)
    assert sorted(auto.divergence) == list(range(1, 7))
    best, value = auto.ranking()[0]
    assert auto.layers == [best] and value == max(auto.divergence.values()) > 0
    every = attention.collect(lm, prompt_sets, list(range(1, 7)), "mean", options)
    a, b = every.mean("benign")[:, 0], every.mean("jailbreak")[:, 0]
    count = np.minimum(
        every.counts["benign"].cpu().numpy(), every.counts["jailbreak"].cpu().numpy()
    )
    for i, layer in enumerate(range(1, 7)):
        assert auto.divergence[layer] == pytest.approx(
            attention.js_divergence(a[i], b[i], count), rel=1e-9
        )
    np.testing.assert_allclose(
        auto.sums["jailbreak"].cpu().numpy(), every.sums["jailbreak"].cpu().numpy()[best - 1 : best]
    )


def test_models_without_attention_are_not_applicable(prompt_sets):
    with pytest.raises(attention.UserError, match="not applicable: mamba2 has no attention"):
        attention.collect(load_model("tiny:mamba2"), prompt_sets, [1])


def test_a_second_pass_resumes_from_its_own_states(prompt_sets, tmp_path, monkeypatch):
    """--layer auto --heads 1 (ranking pass, then the top layer's head): a crash in the second
    pass; the rerun restores both passes' finished sets and folds only the rest."""
    models, options = [ModelSpec("tiny:gptj", dtype="float64")], ExtractOptions(batch_size=3)
    kwargs = dict(layers="auto", heads=1, options=options)
    begins, begin = [], attention._MapReducer.begin

    def counted(self, mask, fail_at=None):
        begins.append(1)
        if len(begins) == fail_at:
            raise RuntimeError("preempted")
        begin(self, mask)

    monkeypatch.setattr(attention._MapReducer, "begin", counted)
    reference = attention.run(tmp_path / "ref", models, prompt_sets, **kwargs)
    assert len(begins) == 12  # 3 + 3 batches per pass: the 10th is the second pass's jailbreak set
    begins.clear()
    monkeypatch.setattr(attention._MapReducer, "begin", lambda s, m: counted(s, m, fail_at=10))
    checkpoint = runs.prepare(tmp_path / "run", "attention", {"test": 1})
    with pytest.raises(RuntimeError, match="preempted"):
        attention.run(tmp_path / "run", models, prompt_sets, checkpoint=checkpoint, **kwargs)
    saved = sorted(p.stem for p in checkpoint.root.glob("*.safetensors"))
    assert saved == ["gptj_maps_benign", "gptj_rank_benign", "gptj_rank_jailbreak"]
    begins.clear()
    monkeypatch.setattr(attention._MapReducer, "begin", counted)
    checkpoint = runs.prepare(tmp_path / "run", "attention", {"test": 1})
    resumed = attention.run(tmp_path / "run", models, prompt_sets, checkpoint=checkpoint, **kwargs)
    assert len(begins) == 3  # the second pass's jailbreak batches only
    (a,), (b,) = reference, resumed
    assert a.layers == b.layers and a.divergence == b.divergence and a.heads == b.heads == 1
    for name in a.sums:
        np.testing.assert_array_equal(a.sums[name].numpy(), b.sums[name].numpy())
        np.testing.assert_array_equal(a.counts[name].numpy(), b.counts[name].numpy())
