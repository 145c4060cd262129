"""Query × key attention maps of chosen layers, averaged over prompts; where scenarios differ most.

For each asked layer, the attention probabilities of each batch (captured for that
layer only, see ``capture``) are reduced on the device into float64 sums and counts
per (query position, key position), start-aligned (position i = the prompt's i-th
real token), counted only where both tokens are real and the key is visible to the
query (k <= q in causal models). Heads are averaged (``mean``), one head is kept
(``N``) or all are kept (``all``). Layer l >= 1 is the attention of the block whose
output is layer l; layer 0 (embedding output) has none.

Stored in the run's ``trace.zarr`` as ``attn_mean`` / ``attn_count`` with dims
(model, scenario, attn_layer[, head], query, key) — ``attn_layer`` holds layer
indices in the store's convention, a dimension of its own so that the maps of a few
layers do not widen the per-layer grid — and, after ``--layer auto``,
``attn_divergence`` (model, layer): the mean Jensen–Shannon divergence (bits) between
the two scenarios' mean attention rows (written by ``attention_store``).

Maps run on the engine of extraction (``engine.run_models``, local or Ray) as an
``AttentionJob``: sums and counts are additive, so shards merge by summing, and each
(model, pass, prompt set) state is checkpointed per batch, so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.prompts import PromptSet
from jbtrace.trace import attention_store, capture, hooks, runs, store
from jbtrace.trace.attention_store import to_dataset
from jbtrace.trace.checkpoint import BatchCheckpoint, Checkpoint
from jbtrace.trace.engine import Engine, ModelSpec, Progress, describe, run_models
from jbtrace.trace.extract import ExtractOptions, encode, pad_batch, plan_batches, positions

log = logging.getLogger(__name__)


def parse_heads(text: str | int) -> str | int:
    """``mean``, ``all`` or a head index N (checked against each model later)."""
    if text in ("mean", "all"):
        return text
    try:
        head = int(text)
    except ValueError:
        raise UserError(f"--heads {text!r}: choose mean, all or a head index") from None
    if head < 0:
        raise UserError(f"--heads {text!r}: a head index is 0 or more")
    return head


def parse_layers(values: list[str] | None) -> list[int] | str:
    """``["auto"]`` → "auto"; otherwise layer indices (>= 1)."""
    values = list(values or ["auto"])
    if values == ["auto"]:
        return "auto"
    try:
        layers = sorted({int(v) for v in values})
    except ValueError:
        raise UserError(
            f"--layer {' '.join(values)}: give layer numbers (repeatable) or auto, not both"
        ) from None
    if layers[0] < 1:
        raise UserError(
            "--layer: layer 0 is the embedding output and has no attention; "
            "attention layers start at 1"
        )
    return layers


@dataclass
class AttentionMaps:
    """One model's maps: float64 sums and counts per scenario, layer, (head,) query, key."""

    model: LoadedModel
    heads: str | int
    n_heads: int
    layers: list[int]
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # scenario → (layer, head', P, P)
    counts: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # scenario → (P, P), the same for every layer
    divergence: dict[int, float] | None = (
        None  # layer → mean JS divergence (bits), with --layer auto
    )

    def mean(self, scenario: str) -> np.ndarray:
        """(layer, head', P, P) mean probability; NaN where nothing was counted."""
        count = self.counts[scenario].cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self.sums[scenario].cpu().numpy() / count, np.nan)

    def ranking(self) -> list[tuple[int, float]]:
        """(layer, divergence), largest first."""
        return sorted((self.divergence or {}).items(), key=lambda kv: -kv[1])


class _MapReducer:
    """Capture callback: folds one layer's probabilities (B, H, T, T) of a batch into cell sums."""

    def __init__(
        self, layers: list[int], heads: str | int, n_heads: int, n_pos: int, causal: bool, device
    ):
        self.slot = {layer: i for i, layer in enumerate(layers)}
        self.heads, self.n_pos, self.causal = heads, n_pos, causal
        n_out = n_heads if heads == "all" else 1
        self.sums = torch.zeros(
            len(layers), n_out, n_pos * n_pos, dtype=torch.float64, device=device
        )
        self.counts = torch.zeros(n_pos * n_pos, dtype=torch.float64, device=device)
        self.cells: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None

    def begin(self, mask: torch.Tensor) -> None:
        """Cells of the batch's (query, key) pairs that count: both real, key visible to query."""
        pos = positions(mask, "start", self.n_pos)
        keep = (pos[:, :, None] >= 0) & (pos[:, None, :] >= 0)
        if self.causal:
            keep &= pos[:, None, :] <= pos[:, :, None]
        self.keep = keep
        self.cells = (pos[:, :, None] * self.n_pos + pos[:, None, :])[keep]
        self.counts.index_add_(0, self.cells, torch.ones_like(self.cells, dtype=torch.float64))

    def __call__(self, layer: int, probs: torch.Tensor) -> None:
        if self.heads == "mean":
            probs = probs.mean(1, keepdim=True)
        elif self.heads != "all":
            probs = probs[:, self.heads : self.heads + 1]
        values = probs.transpose(0, 1)[:, self.keep].double()  # (head', n)
        self.sums[self.slot[layer]].index_add_(1, self.cells, values)


def collect(
    lm: LoadedModel,
    prompt_sets: list[PromptSet],
    layers: list[int] | str = "auto",
    heads: str | int = "mean",
    options: ExtractOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> AttentionMaps:
    """Mean attention maps of ``lm`` for each prompt set, in this process.

    ``layers="auto"`` ranks all layers and keeps the top one.
    """
    options = options or ExtractOptions()
    maps = AttentionJob(layers, heads).run(lm, prompt_sets, options, progress)
    if layers != "auto":
        return maps
    ranking = rank(maps, prompt_sets)
    if heads == "mean":
        return keep_best(maps, ranking)
    # a second pass over the chosen layer only, keeping the asked heads
    again = AttentionJob([max(ranking, key=ranking.get)], heads)
    return dataclasses.replace(again.run(lm, prompt_sets, options, progress), divergence=ranking)


def rank(maps: AttentionMaps, prompt_sets: list[PromptSet]) -> dict[int, float]:
    """Each mapped layer's mean JS divergence (bits) between the first two sets' head means."""
    names = [p.name for p in prompt_sets[:2]]
    if len(names) < 2:
        raise UserError("--layer auto compares two prompt sets: give two --prompts")
    a, b = (maps.mean(n)[:, 0] for n in names)
    count = np.minimum(maps.counts[names[0]].cpu().numpy(), maps.counts[names[1]].cpu().numpy())
    return {layer: js_divergence(a[i], b[i], count) for i, layer in enumerate(maps.layers)}


def keep_best(maps: AttentionMaps, ranking: dict[int, float]) -> AttentionMaps:
    """The maps of the top-ranked layer only, with the ranking."""
    best = max(ranking, key=ranking.get)
    keep = maps.layers.index(best)
    sums = {k: v[keep : keep + 1] for k, v in maps.sums.items()}
    return dataclasses.replace(maps, layers=[best], sums=sums, divergence=ranking)


@dataclass(frozen=True)
class AttentionJob:
    """The engine's job (see ``engine.Job``) for the maps of one pass over ``layers``.

    ``layers="auto"`` is the ranking pass: every layer, heads averaged (``heads`` is only
    checked); a dict gives each model's layers by name (the pass after a ranking).
    """

    layers: list[int] | str | dict[str, list[int]]
    heads: str | int = "mean"
    run_provenance: dict | None = None  # the run's store: a model must match its namesake
    where: str = ""  # that store, for the message

    @property
    def tag(self) -> str:
        return "rank" if self.layers == "auto" else "maps"

    def run(self, lm, prompt_sets, options, progress=None, checkpoint=None) -> AttentionMaps:
        if self.run_provenance:
            models = {"models": {lm.name: lm.provenance}}
            runs.check_same_inputs(self.run_provenance, models, self.where)
        layers = self.layers[lm.name] if isinstance(self.layers, dict) else self.layers
        asked, n_heads = _check(lm, layers, self.heads)
        heads = "mean" if layers == "auto" else self.heads
        hook = BatchCheckpoint(checkpoint) if checkpoint else None
        maps = _run(lm, prompt_sets, asked, heads, n_heads, options, progress, hook, self.tag)
        maps.model = describe(lm)  # the weights are not needed any more
        return maps

    def state(self, maps):
        return maps_state(maps)

    def from_state(self, arrays, meta, options):
        return maps_from_state(arrays, meta)

    def merge(self, parts: list[AttentionMaps]) -> AttentionMaps:
        """Shards of disjoint prompts: the sums and counts add up."""
        sums = {k: sum(p.sums[k] for p in parts) for k in parts[0].sums}
        counts = {k: sum(p.counts[k] for p in parts) for k in parts[0].counts}
        return dataclasses.replace(parts[0], sums=sums, counts=counts)

    def name(self, maps):
        return maps.model.name


def _check(lm: LoadedModel, layers: list[int] | str, heads: str | int) -> tuple[list[int], int]:
    """The layers to map (every one for "auto") and the head count, or a UserError."""
    if not lm.has_attention:
        raise UserError(f"not applicable: {lm.name} has no attention")
    available = sorted(surgery.attention_layers(lm.model))
    n_heads = _n_heads(lm)
    if isinstance(heads, int) and heads >= n_heads:
        raise UserError(f"--heads {heads}: {lm.name} has {n_heads} heads (0..{n_heads - 1})")
    asked = available if layers == "auto" else list(layers)
    missing = [layer for layer in asked if layer not in available]
    if missing:
        raise UserError(
            f"--layer {', '.join(map(str, missing))}: {lm.name} has attention at layers "
            f"{available[0]}..{available[-1]}"
        )
    return asked, n_heads


def _run(
    lm, prompt_sets, layers, heads, n_heads, options, progress, checkpoint=None, tag="maps"
) -> AttentionMaps:
    n_pos = min(options.max_tokens, lm.max_positions or options.max_tokens)
    maps = AttentionMaps(model=lm, heads=heads, n_heads=n_heads, layers=list(layers))
    for prompt_set in prompt_sets:
        reducer = _MapReducer(maps.layers, heads, n_heads, n_pos, lm.is_causal, lm.device)
        key = f"{lm.name}/{tag}/{prompt_set.name}"
        _fold_set(lm, prompt_set, reducer, options, progress, checkpoint, key)
        shape = (len(maps.layers), reducer.sums.shape[1], n_pos, n_pos)
        maps.sums[prompt_set.name] = reducer.sums.view(shape)
        maps.counts[prompt_set.name] = reducer.counts.view(n_pos, n_pos)
    return maps


def _fold_set(lm, prompt_set, reducer, options, progress, checkpoint, key) -> None:
    """Every batch of one prompt set into ``reducer``, resuming from and saving to
    ``checkpoint`` (a ``BatchCheckpoint``) under ``key``."""
    k, n = options.shard
    ids, _ = encode(lm, [prompt_set.texts[i] for i in range(k, len(prompt_set.texts), n)], options)
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        raise UserError(
            f"{prompt_set.name}: {int((lengths == 0).sum())} prompts have no tokens for {lm.name}"
        )
    batches = plan_batches(lengths, options)
    state = {"sums": reducer.sums, "counts": reducer.counts}  # changed in place by each batch
    done = checkpoint.restore(key, state)["batches_done"] if checkpoint else 0
    if progress and done:
        progress(sum(len(b) for b in batches[:done]))
    backbone, pad_id = surgery.backbone(lm.model), lm.tokenizer.pad_token_id
    with (
        capture.probabilities_hooked(lm.model, list(reducer.slot), reducer),
        torch.inference_mode(),
    ):
        for number, batch in enumerate(batches[done:], start=done + 1):
            input_ids, mask = pad_batch(
                ids, lengths, batch, pad_id, options.padding_side, lm.device
            )
            reducer.begin(mask)
            backbone(**surgery.forward_kwargs(lm.model, input_ids, mask))
            hooks.reached("batch")  # tests kill the process here (see hooks)
            if checkpoint:
                checkpoint.step(key, number, len(batches), state, {})
            if progress:
                progress(len(batch))


def _n_heads(lm: LoadedModel) -> int:
    config = lm.model.config
    for key in ("num_attention_heads", "n_head", "num_heads"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"{lm.name}: its config has no head count")


def js_divergence(a: np.ndarray, b: np.ndarray, count: np.ndarray, min_count: int = 1) -> float:
    """Mean over query rows of the Jensen–Shannon divergence (bits) of two mean maps (query, key).

    Each row is restricted to the keys with at least ``min_count`` prompts in both
    scenarios and renormalised; rows with no such key are skipped.
    """
    keys = count >= min_count
    values = []
    for q in range(a.shape[0]):
        k = keys[q]
        if not k.any():
            continue
        p, r = a[q, k], b[q, k]
        if p.sum() <= 0 or r.sum() <= 0:
            continue
        p, r = p / p.sum(), r / r.sum()
        m = (p + r) / 2
        values.append(0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(r, m))
    return float(np.mean(values)) if values else float("nan")


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))


# ---------------------------------------------------------------- engine, store


def run(
    run_dir: str | Path,
    models: list[ModelSpec],
    prompt_sets: list[PromptSet],
    *,
    layers: list[int] | str = "auto",
    heads: str | int = "mean",
    options: ExtractOptions | None = None,
    engine: Engine | None = None,
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
    info: dict | None = None,
) -> list[AttentionMaps]:
    """Every model's maps, collected on ``engine`` and written into RUN/trace.zarr.

    With a ``checkpoint.Checkpoint``, each (model, pass, prompt set) state is saved after
    batches, and a rerun resumes from it. ``--layer auto`` with heads other than mean runs
    the engine twice: a ranking pass (head mean, every layer), then the top layer's heads.
    """
    options, engine = options or ExtractOptions(), engine or Engine()
    if len(prompt_sets) < 2:
        raise UserError("attention maps compare two prompt sets: give two --prompts")
    path, existing = store.store_path(run_dir), {}
    if path is not None:  # before any model runs: the run's prompt sets (and models) must be these
        with xr.open_zarr(path) as ds:
            existing = store.provenance(ds)
        check = {"prompt_sets": attention_store.sets_info(prompt_sets)}
        runs.check_same_inputs(existing, check, str(path))
    passes = 2 if layers == "auto" and heads != "mean" else 1
    progress = _one_bar_per_model(progress, passes) if progress else None
    job = AttentionJob(layers, heads, existing, str(path))
    results = run_models(job, models, prompt_sets, options, engine, checkpoint, progress)
    if layers == "auto":
        rankings = [rank(maps, prompt_sets) for maps in results]
        if heads == "mean":
            results = [keep_best(m, r) for m, r in zip(results, rankings, strict=True)]
        else:
            best = {
                m.model.name: [max(r, key=r.get)] for m, r in zip(results, rankings, strict=True)
            }
            job = AttentionJob(best, heads, existing, str(path))
            results = run_models(job, models, prompt_sets, options, engine, checkpoint, progress)
            for maps, ranking in zip(results, rankings, strict=True):
                maps.divergence = ranking
    attention_store.save(to_dataset(results, prompt_sets, info), run_dir)
    if checkpoint:
        checkpoint.clear()
    return results


def _one_bar_per_model(progress: Progress, passes: int) -> Progress:
    """``progress`` with one bar per model for all ``passes`` of the engine."""
    bars = {}

    def start(name: str, total: int):
        if name not in bars:
            bars[name] = progress(name, total * passes)
        return bars[name]

    return start


def maps_state(maps: AttentionMaps) -> tuple[dict[str, np.ndarray], dict]:
    """One model's maps as arrays (exact float64 sums and counts) and JSON metadata (checkpoint)."""
    arrays = {
        f"{kind}/{name}": t.cpu().numpy()
        for kind, d in (("sums", maps.sums), ("counts", maps.counts))
        for name, t in d.items()
    }
    model = {
        f.name: getattr(maps.model, f.name)
        for f in dataclasses.fields(maps.model)
        if f.name not in ("model", "tokenizer")
    }
    meta = {
        "model": model,
        "heads": maps.heads,
        "n_heads": maps.n_heads,
        "layers": maps.layers,
        "scenarios": list(maps.sums),
        "divergence": {str(k): v for k, v in (maps.divergence or {}).items()} or None,
    }
    return arrays, meta


def maps_from_state(arrays: dict[str, np.ndarray], meta: dict) -> AttentionMaps:
    model = LoadedModel(model=None, tokenizer=None, **meta["model"])
    divergence = {int(k): v for k, v in meta["divergence"].items()} if meta["divergence"] else None
    return AttentionMaps(
        model=model,
        heads=meta["heads"],
        n_heads=meta["n_heads"],
        layers=meta["layers"],
        sums={n: torch.from_numpy(np.array(arrays[f"sums/{n}"])) for n in meta["scenarios"]},
        counts={n: torch.from_numpy(np.array(arrays[f"counts/{n}"])) for n in meta["scenarios"]},
        divergence=divergence,
    )
