"""Layer bypass and guarded generation against transformers' own generate on models built
without the blocks."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import transformers as T

from jbtrace.defend import guard as G
from jbtrace.detect.detector import Detector, Linear
from jbtrace.errors import UserError
from jbtrace.models import load_model, surgery
from tests.conftest import BENIGN, JAILBREAK

TEXTS = BENIGN[:4] + JAILBREAK[:3]
NEW = 10


@pytest.fixture(scope="module")
def models():
    return {arch: load_model(f"tiny:{arch}") for arch in ("llama", "gptj", "mistral")}


def own_generate(model, tok, text: str, use_cache: bool = True) -> list[int]:
    """transformers' greedy generate on one unpadded prompt, cut at EOS."""
    ids = tok(text, return_tensors="pt")
    new = model.generate(
        **ids,
        max_new_tokens=NEW,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=tok.pad_token_id,
    )[0, ids["input_ids"].shape[1] :].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def without_blocks(model, removed: set[int]):
    """A fresh model of the same family with blocks ``removed`` (1-based) left out, weights
    copied."""
    config = copy.deepcopy(model.config)
    n = surgery.num_blocks(config)
    config.num_hidden_layers = n - len(removed)
    ref = T.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    prefix = next(name for name, m in model.named_modules() if m is surgery.blocks(model))
    kept = [i for i in range(n) if i + 1 not in removed]
    state = {}
    for key, value in model.state_dict().items():
        match = re.match(re.escape(prefix) + r"\.(\d+)\.(.*)", key)
        if match:
            if int(match.group(1)) + 1 in removed:
                continue
            key = f"{prefix}.{kept.index(int(match.group(1)))}.{match.group(2)}"
        state[key] = value
    ref.load_state_dict(state, strict=True)
    return ref


def snapshot(model):
    return (
        surgery.blocks(model),
        list(surgery.blocks(model)),
        model.config.num_hidden_layers,
        [m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)],
    )


@pytest.mark.parametrize(
    "arch,removed", [("llama", {3, 5}), ("gptj", {3, 5}), ("mistral", {3, 5}), ("llama", {1, 32})]
)
@pytest.mark.parametrize("use_cache", [True, False])
def test_bypass_equals_model_built_without_the_blocks(models, arch, removed, use_cache):
    lm = models[arch]
    before = snapshot(lm.model)
    ref = without_blocks(lm.model, removed)
    ours = G.generate(
        lm, TEXTS, G.GenerateOptions(max_new_tokens=NEW, batch_size=4, use_cache=use_cache), removed
    )
    for text, g in zip(TEXTS, ours, strict=True):
        assert g.tokens == own_generate(ref, lm.tokenizer, text, use_cache)
    # the bypass changed something, and the model is whole again afterwards
    assert any(
        g.tokens != own_generate(lm.model, lm.tokenizer, t)
        for t, g in zip(TEXTS, ours, strict=True)
    )
    after = snapshot(lm.model)
    assert (
        after[0] is before[0]
        and all(a is b for a, b in zip(after[1], before[1], strict=True))
        and after[2:] == before[2:]
    )


def test_cache_is_sized_for_the_kept_blocks(models):
    lm = models["llama"]
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt")
    with surgery.bypass(lm.model, [1, 7]), torch.inference_mode():
        cache = lm.model(**ids, use_cache=True).past_key_values
    assert len(cache.layers) == 30 and cache.get_seq_length() == ids["input_ids"].shape[1]


def test_model_restored_after_an_exception(models):
    lm = models["gptj"]
    ids = lm.tokenizer(TEXTS[1], return_tensors="pt")
    with torch.inference_mode():
        expected = lm.model(**ids).logits
    before = snapshot(lm.model)
    with pytest.raises(RuntimeError, match="inside"):
        with surgery.bypass(lm.model, [2, 9, 28]):
            assert len(surgery.blocks(lm.model)) == 25 and lm.model.config.num_hidden_layers == 25
            raise RuntimeError("inside")
    after = snapshot(lm.model)
    assert after[0] is before[0] and after[2:] == before[2:]
    with torch.inference_mode():
        assert torch.equal(lm.model(**ids).logits, expected)


@pytest.mark.parametrize(
    "layers,message", [([0], "layer 0"), ([33], "blocks 1..32"), (list(range(1, 33)), "all 32")]
)
def test_bad_bypass(models, layers, message):
    with pytest.raises(UserError, match=message):
        with surgery.bypass(models["llama"].model, layers):
            pass


def test_unflagged_prompts_are_the_models_own_generate(models):
    lm = models["mistral"]
    flags = [i % 2 == 1 for i in range(len(TEXTS))]
    options = G.GenerateOptions(max_new_tokens=NEW, batch_size=3)
    guarded = G.guard_generate(lm, TEXTS, flags, [4, 6], options)
    never = G.guard_generate(lm, TEXTS, [False] * len(TEXTS), [4, 6], options)
    ref = without_blocks(lm.model, {4, 6})
    for text, flagged, g, n in zip(TEXTS, flags, guarded, never, strict=True):
        own = own_generate(lm.model, lm.tokenizer, text)
        assert n.tokens == own
        assert g.tokens == (own_generate(ref, lm.tokenizer, text) if flagged else own)


def test_seeded_sampling_repeats_and_differs_from_greedy(models):
    lm = models["llama"]
    sample = G.GenerateOptions(max_new_tokens=NEW, sample=True, seed=3)
    a, b = G.generate(lm, TEXTS[:3], sample), G.generate(lm, TEXTS[:3], sample)
    greedy = G.generate(lm, TEXTS[:3], G.GenerateOptions(max_new_tokens=NEW))
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in greedy]


def linear(source: str, layer: int, f1: float, auroc: float = 0.9) -> Linear:
    import numpy as np

    z = np.zeros(2)
    return Linear(
        source,
        layer,
        "last",
        "last",
        "logreg",
        0.5,
        None,
        z,
        z + 1,
        z,
        np.zeros(1),
        cv={"f1": f1, "f1_std": 0.0, "auroc": auroc},
    )


def test_susceptible_layers_prefer_what_the_block_writes():
    det = Detector(
        {},
        [
            linear("resid", 0, 0.99),
            linear("resid", 4, 0.95),
            linear("attn_out", 3, 0.7),
            linear("attn_out", 5, 0.8),
            linear("attn_out", 6, 0.8, auroc=0.95),
            linear("mlp_out", 3, 0.9),
        ],
    )
    layers, how = G.susceptible_layers(det, n_blocks=8, k=2)
    assert layers == [3, 6] and "attn_out/mlp_out" in how
    resid_only = Detector(
        {}, [linear("resid", 0, 0.99), linear("resid", 2, 0.9), linear("resid", 7, 0.95)]
    )
    assert G.susceptible_layers(resid_only, n_blocks=8, k=2)[0] == [2, 7]
    assert det.recommended().layer == 0  # flagging may use any layer, bypass only blocks
