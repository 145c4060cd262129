"""Refusal-direction steering against plain transformers: the direction from
output_hidden_states, scale 0 unchanged, a steered block equal to one whose bias carries it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from jbtrace.defend import guard as G
from jbtrace.defend.steer import Steering, refusal_direction
from jbtrace.errors import UserError
from jbtrace.models import load_model, surgery
from tests.conftest import BENIGN, JAILBREAK
from tests.test_guard import NEW, own_generate

OPTIONS = G.GenerateOptions(max_new_tokens=NEW, batch_size=3, chat_template=False)


@pytest.fixture(scope="module")
def gptj():
    return load_model("tiny:gptj")


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny:llama")


def own_direction(lm, harmful, harmless, layer) -> np.ndarray:
    """Mean last-token hidden_states[layer] of each set, one unpadded prompt at a time."""

    def mean(texts):
        rows = []
        for text in texts:
            ids = lm.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                out = lm.model(**ids, output_hidden_states=True)
            rows.append(out.hidden_states[layer][0, -1].double().numpy())
        return np.mean(rows, 0)

    return mean(harmful) - mean(harmless)


@pytest.mark.parametrize("layer", [1, 3])
def test_direction_equals_difference_of_mean_hidden_states(llama, layer):
    found = refusal_direction(llama, JAILBREAK[:4], BENIGN[:5], layer, chat_template=False)
    expected = own_direction(llama, JAILBREAK[:4], BENIGN[:5], layer)
    np.testing.assert_allclose(found, expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gptj"])
def test_scale_zero_is_plain_generation(arch, llama, gptj):
    lm = {"llama": llama, "gptj": gptj}[arch]
    direction = np.random.default_rng(0).standard_normal(lm.model.config.hidden_size)
    texts = BENIGN[:3] + JAILBREAK[:3]
    plain = G.generate(lm, texts, OPTIONS)
    steered = G.generate(lm, texts, OPTIONS, steering=Steering(2, direction, 0.0))
    assert [g.tokens for g in steered] == [g.tokens for g in plain]


def test_steered_block_equals_a_block_whose_bias_carries_the_vector(gptj):
    """GPT-J's block output includes its MLP's fc_out bias: adding the vector there is steering
    without any hook; both generate the same tokens (cache on and off)."""
    layer = 2
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(gptj.model.config.hidden_size) * 4
    texts = JAILBREAK[:3]
    steered = G.generate(gptj, texts, OPTIONS, steering=Steering(layer, direction, 1.0))
    plain = G.generate(gptj, texts, OPTIONS)
    assert [g.tokens for g in steered] != [g.tokens for g in plain]  # the vector does something
    ref = copy.deepcopy(gptj.model)
    with torch.no_grad():
        surgery.blocks(ref)[layer - 1].mlp.fc_out.bias += torch.as_tensor(direction).float()
    for use_cache in (True, False):
        expected = [own_generate(ref, gptj.tokenizer, t, use_cache) for t in texts]
        assert [g.tokens for g in steered] == expected


def test_hook_removed_after_an_exception(llama):
    before = [len(b._forward_hooks) for b in surgery.blocks(llama.model)]
    with pytest.raises(RuntimeError, match="boom"):
        with surgery.steer(llama.model, 2, torch.zeros(llama.model.config.hidden_size)):
            assert len(surgery.blocks(llama.model)[1]._forward_hooks) == before[1] + 1
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in surgery.blocks(llama.model)] == before


@pytest.mark.parametrize("layer", [0, 99])
def test_steering_outside_the_blocks_is_one_line(llama, layer):
    with pytest.raises(UserError, match="layer"):
        with surgery.steer(llama.model, layer, torch.zeros(llama.model.config.hidden_size)):
            pass
