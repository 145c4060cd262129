"""Extraction agrees with an independent computation: transformers' output_hidden_states + numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

from jbtrace.models import load_model
from jbtrace.trace import stats
from jbtrace.trace.extract import ExtractOptions, extract

ALL_STATS = tuple(stats.REGISTRY)
_MAMBA2_OLD_LAYOUT = Version(transformers.__version__).release < (5, 25)


def reference_layers(lm, text: str) -> np.ndarray:
    """(layers, tokens, hidden) for one prompt, unpadded, from output_hidden_states (float64
    numpy)."""
    enc = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**enc, output_hidden_states=True)
    hs = [h[0].double().numpy() for h in out.hidden_states]
    if lm.model.config.model_type == "mamba2" and _MAMBA2_OLD_LAYOUT:
        # transformers < 5.25 reports Mamba2's block outputs then the final norm, with no
        # embedding entry; 5.25 (output capturing) reports the common layout (embedding first)
        with torch.no_grad():
            embedded = lm.model.get_input_embeddings()(enc["input_ids"])[0].double().numpy()
        hs = [embedded] + hs[:-2] + [hs[-1]]
    return np.stack(hs)


def reference_attention(lm, text: str) -> list[np.ndarray] | None:
    """Per block (heads, query, key) probabilities of one prompt from eager output_attentions;
    None without attention."""
    if not lm.has_attention:
        return None
    enc = lm.tokenizer(text, return_tensors="pt")
    implementation = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(**enc, output_attentions=True)
    finally:
        lm.model.set_attn_implementation(implementation)
    return [a[0].double().numpy() for a in out.attentions]


def reference_attention_stat(
    name: str, A: list[np.ndarray] | None, n_layers: int, n_tokens: int
) -> np.ndarray:
    """(layers, tokens): layer l >= 1 from block l's attention, mean over heads; NaN at layer 0
    and without attention."""
    out = np.full((n_layers, n_tokens), np.nan)
    for layer, P in enumerate(A or [], start=1):
        if name == "attn_entropy":
            logp = np.log(np.where(P > 0, P, 1.0))
            out[layer] = -(P * logp).sum(-1).mean(0)
        else:  # attn_sink: attention on the first token
            out[layer] = P[:, :, 0].mean(0)
    return out


def reference_values(lm, text: str) -> dict[str, np.ndarray]:
    """Every statistic's (layers, tokens) values for one prompt, from one reference forward pass
    each."""
    H = reference_layers(lm, text)
    A = reference_attention(lm, text)
    return {
        name: reference_attention_stat(name, A, *H.shape[:2])
        if stat.source == "attention"
        else reference_stat(name, H)
        for name, stat in stats.REGISTRY.items()
    }


def reference_stat(name: str, H: np.ndarray) -> np.ndarray:
    """(layers, tokens) values of a statistic, in numpy; NaN where undefined."""
    norm = np.linalg.norm(H, axis=-1)
    if name == "cos_prev":
        cos = (H[1:] * H[:-1]).sum(-1) / (norm[1:] * norm[:-1])
        return np.concatenate([np.full((1, H.shape[1]), np.nan), cos])
    return {
        "log_norm": np.log(norm),
        "norm": norm,
        "mean": H.mean(-1),
        "rms": np.sqrt((H**2).mean(-1)),
        "max_abs": np.abs(H).max(-1),
    }[name]


def aligned(v: np.ndarray, align: str, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """One prompt's (layers, tokens) values on the position axis: (positions, values (layers,
    positions)).

    start: token i at position i; end: counted back from the last token; relative: one value per
    bin, the mean of the prompt's tokens in bin floor(i · bins / length).
    """
    n = v.shape[1]
    if align == "start":
        return np.arange(n), v
    if align == "end":
        return np.arange(n), v[:, ::-1]
    which = np.arange(n) * bins // n
    present = np.unique(which)
    return present, np.stack([v[:, which == k].mean(1) for k in present], axis=1)


def reference_moments(per_prompt: list[np.ndarray], align="start", bins=16):
    """Per-(layer, position) count / mean / var (ddof=1), per-prompt means and slopes, from
    per-prompt values."""
    n_layers = per_prompt[0].shape[0]
    n_pos = bins if align == "relative" else max(v.shape[1] for v in per_prompt)
    grid = np.full((len(per_prompt), n_layers, n_pos), np.nan)  # prompt, layer, position
    slopes = np.full((n_layers, len(per_prompt)), np.nan)
    for i, v in enumerate(per_prompt):
        pos, values = aligned(v, align, bins)
        grid[i][:, pos] = values
        for layer in range(n_layers):
            if pos.size > 1 and np.isfinite(values[layer]).all():
                slopes[layer, i] = np.polyfit(pos, values[layer], 1)[0]
    count = np.isfinite(grid).sum(0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(grid, axis=0)
        var = np.where(count > 1, np.nanvar(grid, axis=0, ddof=1), np.nan)
        prompt_means = np.stack([np.nanmean(v, axis=1) for v in per_prompt], axis=-1)
    count = count[:, : int(np.flatnonzero(count.any(0)).max()) + 1] if count.any() else count
    return count, mean[:, : count.shape[1]], var[:, : count.shape[1]], prompt_means, slopes


def check(lm, prompt_sets, align="start", batch_size=3, padding_side="right"):
    options = ExtractOptions(
        stats=ALL_STATS, batch_size=batch_size, align=align, padding_side=padding_side
    )
    trace = extract(lm, prompt_sets, options)
    for prompt_set in prompt_sets:
        st = trace.scenarios[prompt_set.name]
        shape = (len(ALL_STATS), lm.n_layers, trace.n_positions)
        mean = st.moments.mean.view(shape).numpy()
        var = st.moments.variance().view(shape).numpy()
        count = st.moments.count.view(shape).numpy()
        reference = [reference_values(lm, text) for text in prompt_set.texts]
        for s, name in enumerate(ALL_STATS):
            ref_count, ref_mean, ref_var, ref_prompt, ref_slope = reference_moments(
                [r[name] for r in reference], align, options.bins
            )
            P = ref_count.shape[1]
            assert ref_count.shape[0] == lm.n_layers
            np.testing.assert_array_equal(count[s, :, :P], ref_count, err_msg=name)
            assert count[s, :, P:].sum() == 0
            seen = ref_count > 0
            if not seen.any():  # e.g. attention statistics of an attention-free model
                continue
            # float32 kernels of different batch widths round differently: 1e-5, relative to
            # values above 1
            assert (
                np.abs(mean[s, :, :P][seen] - ref_mean[seen])
                / np.maximum(1.0, np.abs(ref_mean[seen]))
            ).max() <= 1e-5, name
            both = (
                ref_count > 1
            )  # spread compared as standard deviation, on the scale of the values
            sd_err = np.abs(np.sqrt(var[s, :, :P][both]) - np.sqrt(ref_var[both]))
            assert (sd_err / np.maximum(1.0, np.abs(ref_mean[both]))).max() <= 1e-5, name
            finite = np.isfinite(ref_prompt)
            np.testing.assert_array_equal(np.isfinite(st.prompt_values[s]), finite)
            err = np.abs(st.prompt_values[s][finite] - ref_prompt[finite]) / np.maximum(
                1.0, np.abs(ref_prompt[finite])
            )
            assert err.max() <= 1e-5, name
            has_slope = np.isfinite(ref_slope)
            np.testing.assert_array_equal(np.isfinite(st.prompt_slope[s]), has_slope, err_msg=name)
            err = np.abs(st.prompt_slope[s][has_slope] - ref_slope[has_slope]) / np.maximum(
                1.0, np.abs(ref_prompt[has_slope])
            )
            assert err.max() <= 1e-4, name


@pytest.mark.parametrize("arch", ["gptj", "llama", "mistral", "mamba2"])
def test_agrees_with_output_hidden_states(arch, model_dirs, prompt_sets):
    lm = load_model(str(model_dirs[arch]))
    assert not lm.random_init  # loaded from a directory like any user model
    check(lm, prompt_sets)


def test_minilm_agrees_with_output_hidden_states(prompt_sets):
    check(load_model("builtin:minilm"), prompt_sets)


@pytest.mark.parametrize("arch", ["llama", "mamba2"])
def test_end_alignment_and_left_padding_agree(arch, model_dirs, prompt_sets):
    lm = load_model(str(model_dirs[arch]))
    check(lm, prompt_sets, align="end", batch_size=4, padding_side="left")


@pytest.mark.parametrize("arch", ["gptj", "mamba2"])
def test_relative_alignment_folds_one_value_per_prompt_and_bin(arch, model_dirs, prompt_sets):
    """Counts per bin are prompts (not tokens), and each prompt weighs the same in a bin's mean."""
    check(load_model(str(model_dirs[arch])), prompt_sets, align="relative")


def test_layer_counts_follow_the_paper_models():
    assert [load_model(f"tiny:{a}").n_layers for a in ("gptj", "llama", "mistral")] == [29, 33, 33]
