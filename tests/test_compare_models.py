"""Compare on real extractions of a tiny model: null calibration (A/A) and a planted signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jbtrace.analysis import compare
from jbtrace.models import load_model, surgery
from jbtrace.prompts import load_prompts
from jbtrace.trace import store
from jbtrace.trace.extract import ExtractOptions, extract
from tests.conftest import make_set

OPTIONS = ExtractOptions(max_tokens=64, batch_size=16)


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny:llama")


def halves(texts, n, seed):
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(texts))[: 2 * n]
    return make_set("benign", [texts[i] for i in pick[:n]]), make_set(
        "jailbreak", [texts[i] for i in pick[n:]]
    )


def token_values(lm, texts, max_tokens=64) -> np.ndarray:
    """log_norm of every real token at every layer, (prompt, layer, position), from
    output_hidden_states."""
    enc = lm.tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    with torch.inference_mode():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    raw = torch.stack([torch.log(h.double().norm(dim=-1)) for h in hs], dim=1).numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    return np.where(mask[:, None, :], raw, np.nan)


@pytest.mark.slow
def test_null_calibration_a_a_splits(llama):
    """One prompt set split in two seeded halves, 20 times: BH keeps false discoveries at the
    nominal rate.

    Under the complete null the FDR is the chance of any discovery, so at q = 0.05 about 1 split in
    20 may show one; 4 or more would happen with probability < 2% if the rate were right. The token
    values come from the model's own forward pass; each split is aggregated with numpy.
    """
    from tests.test_compare import synthetic_store

    texts = load_prompts("benign", "builtin:benign", limit=120, seed=0).texts
    raw = token_values(llama, texts)
    any_cell, any_layer, shares = 0, 0, []
    for split in range(20):
        is_b = np.random.default_rng(split).permutation(len(texts)) < len(texts) // 2
        result = compare.compare(
            synthetic_store({"llama": raw}, is_b), n_permutations=200, n_bootstrap=20, seed=split
        )
        cells = result.cells.sel(model="llama", stat="log_norm")
        tested = int((cells["status"] == 0).sum())
        assert tested > 1000
        n_sig = int(cells["significant"].sum())
        shares.append(n_sig / tested)
        any_cell += n_sig > 0
        any_layer += bool(result.layer_profile["significant"].sel(model="llama").any())
        if n_sig == 0:
            assert any("no cell differs significantly" in s for s in result.observations["llama"])
    assert any_cell <= 3, (any_cell, shares)
    assert any_layer <= 3
    assert np.mean(shares) < 0.01


class plant:
    """Scale the residual stream read at ``layers`` by ``factor`` and undo it before the next block.

    Layer l is the output of block l − 1; dividing the next block's input restores the stream,
    so only the values read at ``layers`` change (log_norm moves by exactly log(factor)).
    """

    def __init__(self, lm, layers, factor):
        self.chain, self.layers, self.factor = surgery.blocks(lm.model), layers, factor

    def __enter__(self):
        f = self.factor

        def scale(module, args, output):
            return (output[0] * f, *output[1:]) if isinstance(output, tuple) else output * f

        def unscale(module, args, kwargs):
            if args:
                return (args[0] / f, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] / f}

        self.handles = []
        for layer in self.layers:
            self.handles.append(self.chain[layer - 1].register_forward_hook(scale))
            self.handles.append(
                self.chain[layer].register_forward_pre_hook(unscale, with_kwargs=True)
            )
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def hooks(lm) -> list[int]:
    return [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in surgery.blocks(lm.model)]


@pytest.mark.slow
def test_planted_signal_found_at_exactly_those_layers(llama):
    # the texts this oracle was written against: on the people corpus this seed's split has a
    # chance discovery at layer 0 (the null calibration above runs on the people corpus)
    a, b = halves(load_prompts("benign", "builtin:benign-synthetic").texts, 40, 99)
    plain = extract(llama, [a, b], OPTIONS)
    before = hooks(llama)
    with plant(llama, [3, 4, 5], 1.3):
        planted = extract(llama, [b], OPTIONS)
    unplanted = plain.scenarios["jailbreak"].prompt_values[0].mean(-1) - plain.scenarios[
        "benign"
    ].prompt_values[0].mean(-1)
    # the hook changes only the values read at layers 3-5
    changed = (
        planted.scenarios["jailbreak"].prompt_values[0]
        - plain.scenarios["jailbreak"].prompt_values[0]
    )
    np.testing.assert_allclose(changed[[3, 4, 5]], np.log(1.3), atol=1e-5)
    np.testing.assert_allclose(np.delete(changed, [3, 4, 5], axis=0), 0, atol=1e-5)
    plain.scenarios["jailbreak"] = planted.scenarios["jailbreak"]
    ds = store.build([plain], [a, b])
    result = compare.compare(ds, n_permutations=500, n_bootstrap=200, seed=0)
    lp = result.layer_profile.sel(model="llama", stat="log_norm")
    assert list(lp.layer.values[lp["significant"].values]) == [3, 4, 5]
    assert (lp["diff"].sel(layer=[3, 4, 5]) > 0).all()
    np.testing.assert_allclose(
        lp["diff"].values[:33],
        unplanted + np.where(np.isin(np.arange(33), [3, 4, 5]), np.log(1.3), 0),
        atol=1e-5,
    )
    cells = result.cells.sel(model="llama", stat="log_norm")
    sig = cells["significant"]
    inside = sig.sel(layer=[3, 4, 5])
    outside = int(sig.sum()) - int(inside.sum())
    assert int(inside.sum()) >= 0.5 * int((cells["status"].sel(layer=[3, 4, 5]) == 0).sum())
    assert (cells["diff"].where(inside) > 0).sum() == inside.sum()  # right sign everywhere
    assert outside <= 0.05 * int(sig.sum()) + 1  # false discoveries within the FDR
    bands = result.models["llama"]["stats"]["log_norm"]["bands"]
    assert [x["layers"] for x in bands] == [[3, 5]] and bands[0]["sign"] == 1
    assert bands[0]["ci_low"] < np.log(1.3) + unplanted[3:6].mean() < bands[0]["ci_high"]
    assert any("raises log_norm in layers 3–5" in s for s in result.observations["llama"])
    assert hooks(llama) == before  # the planted hooks are gone
