"""Captured detector features agree with output_hidden_states; sub-layer outputs add up to each
block's update."""

from __future__ import annotations

import numpy as np
import pytest

from jbtrace.detect import features as F
from jbtrace.errors import UserError
from jbtrace.models import load_model
from tests.conftest import BENIGN, JAILBREAK
from tests.test_extract_oracle import reference_layers

TEXTS = BENIGN + JAILBREAK


def capture(lm, texts, requests, kinds=("cp", "last", "mean"), cp_positions=64, **kw):
    """Features of ``texts`` in batches of 4 (so that padding occurs)."""
    return F.capture(
        lm, F.tokenize(lm, texts, 512), requests, kinds, cp_positions, batch_size=4, **kw
    )


@pytest.mark.parametrize("spec", ["tiny:llama", "builtin:minilm"])
def test_resid_features_agree_with_output_hidden_states(spec):
    lm = load_model(spec)
    refs = [reference_layers(lm, t) for t in TEXTS]
    layers = [0, 3, lm.n_layers - 1]
    got = capture(lm, TEXTS, [("resid", layer) for layer in layers], cp_positions=8)
    for layer in layers:
        feats = got[("resid", layer)]
        for i, ref in enumerate(refs):
            h = ref[layer]
            cp = np.zeros((8, h.shape[1]))
            cp[: min(8, len(h))] = h[:8]
            np.testing.assert_allclose(feats["cp"][i], cp, atol=2e-4, rtol=1e-4)
            np.testing.assert_allclose(feats["last"][i], h[-1], atol=2e-4, rtol=1e-4)
            np.testing.assert_allclose(feats["mean"][i], h.mean(0), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "arch,parts",
    [("llama", ("attn_out", "mlp_out")), ("gptj", ("attn_out", "mlp_out")), ("mamba2", ("mixer",))],
)
def test_sublayer_outputs_sum_to_the_residual_update(arch, parts):
    """Block l adds exactly its sub-layers' outputs: hidden_states[l] − hidden_states[l−1]
    = Σ parts."""
    lm = load_model(f"tiny:{arch}")
    layers = [1, 5, lm.n_layers - 2]
    got = capture(lm, TEXTS, [(p, layer) for p in parts for layer in layers], kinds=("cp",))
    for i, text in enumerate(TEXTS):
        ref = reference_layers(lm, text)
        n = len(ref[0])
        for layer in layers:
            added = sum(got[(p, layer)]["cp"][i, :n].astype(np.float64) for p in parts)
            np.testing.assert_allclose(added, ref[layer] - ref[layer - 1], atol=2e-4, rtol=1e-3)
            assert not np.any(got[(parts[0], layer)]["cp"][i, n:])  # zero padding after the prompt


def test_missing_sources():
    mamba = load_model("tiny:mamba2")
    with pytest.raises(UserError, match="no attn_out"):
        F.points(mamba, "attn_out")
    assert F.points(load_model("tiny:llama"), "attn_out")[0] is None
    with pytest.raises(UserError, match="unknown feature source"):
        F.points(mamba, "ffn")
    mixers = F.points(mamba, "mixer")
    assert (
        mixers[0] is None
        and len(mixers) == mamba.n_layers
        and all(p is not None for p in mixers[1:])
    )
