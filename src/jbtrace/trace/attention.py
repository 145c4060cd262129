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
the two scenarios' mean attention rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import jbtrace
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, surgery
from jbtrace.prompts import PromptSet
from jbtrace.trace import capture, runs, store
from jbtrace.trace.extract import ExtractOptions, encode, pad_batch, plan_batches, positions

log = logging.getLogger(__name__)

VARIABLES = ("attn_mean", "attn_count", "attn_divergence")
DIMS = ("attn_layer", "head", "query", "key")


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
    """Mean attention maps of ``lm`` for each prompt set.

    ``layers="auto"`` ranks all layers and keeps the top one.
    """
    options = options or ExtractOptions()
    if not lm.has_attention:
        raise UserError(f"not applicable: {lm.name} has no attention")
    available = sorted(surgery.attention_layers(lm.model))
    n_heads = _n_heads(lm)
    if isinstance(heads, int) and heads >= n_heads:
        raise UserError(f"--heads {heads}: {lm.name} has {n_heads} heads (0..{n_heads - 1})")
    auto = layers == "auto"
    asked = available if auto else list(layers)
    missing = [layer for layer in asked if layer not in available]
    if missing:
        raise UserError(
            f"--layer {', '.join(map(str, missing))}: {lm.name} has attention at layers "
            f"{available[0]}..{available[-1]}"
        )
    first_heads = "mean" if auto else heads
    maps = _run(lm, prompt_sets, asked, first_heads, n_heads, options, progress)
    if not auto:
        return maps
    names = [p.name for p in prompt_sets[:2]]
    if len(names) < 2:
        raise UserError("--layer auto compares two prompt sets: give two --prompts")
    a, b = (maps.mean(n)[:, 0] for n in names)
    count = np.minimum(maps.counts[names[0]].cpu().numpy(), maps.counts[names[1]].cpu().numpy())
    ranking = {layer: js_divergence(a[i], b[i], count) for i, layer in enumerate(asked)}
    best = max(ranking, key=ranking.get)
    if heads == "mean":
        keep = asked.index(best)
        maps.layers = [best]
        maps.sums = {k: v[keep : keep + 1] for k, v in maps.sums.items()}
    else:  # a second pass over the chosen layer only, keeping the asked heads
        maps = _run(lm, prompt_sets, [best], heads, n_heads, options, progress)
    maps.divergence = ranking
    return maps


def _run(lm, prompt_sets, layers, heads, n_heads, options, progress) -> AttentionMaps:
    n_pos = min(options.max_tokens, lm.max_positions or options.max_tokens)
    maps = AttentionMaps(model=lm, heads=heads, n_heads=n_heads, layers=list(layers))
    backbone = surgery.backbone(lm.model)
    device = lm.device
    for prompt_set in prompt_sets:
        reducer = _MapReducer(maps.layers, heads, n_heads, n_pos, lm.is_causal, device)
        k, n = options.shard
        ids, _ = encode(
            lm, [prompt_set.texts[i] for i in range(k, len(prompt_set.texts), n)], options
        )
        lengths = np.array([len(x) for x in ids])
        if (lengths == 0).any():
            raise UserError(
                f"{prompt_set.name}: {int((lengths == 0).sum())} prompts have no tokens "
                f"for {lm.name}"
            )
        with capture.probabilities_hooked(lm.model, maps.layers, reducer), torch.inference_mode():
            for batch in plan_batches(lengths, options):
                input_ids, mask = pad_batch(
                    ids, lengths, batch, lm.tokenizer.pad_token_id, options.padding_side, device
                )
                reducer.begin(mask)
                backbone(**surgery.forward_kwargs(lm.model, input_ids, mask))
                if progress:
                    progress(len(batch))
        shape = (len(maps.layers), reducer.sums.shape[1], n_pos, n_pos)
        maps.sums[prompt_set.name] = reducer.sums.view(shape)
        maps.counts[prompt_set.name] = reducer.counts.view(n_pos, n_pos)
    return maps


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


# ---------------------------------------------------------------- store


def _grids(all_maps: list[AttentionMaps], scenarios: list[str], layers: list[int], n_pos: int):
    """Mean and count (model, scenario, layer, head, query, key) and divergence (model, layer)."""
    n_head = max(m.n_heads for m in all_maps) if all_maps[0].heads == "all" else 1
    shape = (len(all_maps), len(scenarios), len(layers), n_head, n_pos, n_pos)
    mean, count = np.full(shape, np.nan), np.zeros(shape[:3] + shape[4:], np.int64)
    n_layers = max(m.model.n_layers for m in all_maps)
    divergence = np.full((len(all_maps), n_layers), np.nan)
    for i, maps in enumerate(all_maps):
        for j, scenario in enumerate(scenarios):
            values = maps.mean(scenario)[..., :n_pos, :n_pos]
            counts = maps.counts[scenario].cpu().numpy()[:n_pos, :n_pos].astype(np.int64)
            for slot, layer in enumerate(maps.layers):
                mean[i, j, layers.index(layer), : values.shape[1]] = values[slot]
                count[i, j, layers.index(layer)] = counts
        for layer, value in (maps.divergence or {}).items():
            divergence[i, layer] = value
    return mean, count, divergence


def to_dataset(
    all_maps: list[AttentionMaps], prompt_sets: list[PromptSet], info: dict | None = None
) -> xr.Dataset:
    """The attention variables of several models as one Dataset.

    Cropped to the positions any prompt reached.
    """
    scenarios = [p.name for p in prompt_sets]
    layers = sorted({layer for m in all_maps for layer in m.layers})
    keep_heads = all_maps[0].heads == "all"
    reached = [
        np.flatnonzero(m.counts[s].cpu().numpy().any(1)) for m in all_maps for s in scenarios
    ]
    n_pos = max((int(r.max()) + 1 for r in reached if r.size), default=1)
    mean, count, divergence = _grids(all_maps, scenarios, layers, n_pos)
    n_head, n_layers = mean.shape[3], divergence.shape[1]
    cell = ("model", "scenario", "attn_layer", "head", "query", "key")
    if not keep_heads:
        mean, cell = mean[:, :, :, 0], tuple(d for d in cell if d != "head")
    data = {
        "attn_mean": (
            cell,
            mean,
            {
                "heads": str(all_maps[0].heads),
                "description": "mean attention probability over prompts (and heads unless kept)",
            },
        ),
        "attn_count": (
            ("model", "scenario", "attn_layer", "query", "key"),
            count,
            {
                "description": "prompts in which both tokens are real "
                "and the key is visible to the query"
            },
        ),
    }
    if any(m.divergence for m in all_maps):
        data["attn_divergence"] = (
            ("model", "layer"),
            divergence,
            {
                "description": "mean Jensen-Shannon divergence (bits) between the two scenarios' "
                "mean attention rows (head mean), per layer"
            },
        )
    coords = {
        "model": [m.model.name for m in all_maps],
        "scenario": scenarios,
        "attn_layer": layers,
        "query": np.arange(n_pos),
        "key": np.arange(n_pos),
        "model_label": ("model", [m.model.label for m in all_maps]),
        "random_init": ("model", [m.model.random_init for m in all_maps]),
    }
    if keep_heads:
        coords["head"] = np.arange(n_head)
    if "attn_divergence" in data:
        coords["layer"] = np.arange(n_layers)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["attention"] = json.dumps(
        {
            "jbtrace_version": jbtrace.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "heads": str(all_maps[0].heads),
            "layers": {m.model.name: m.layers for m in all_maps},
            "ranking": {m.model.name: m.ranking() for m in all_maps if m.divergence},
            "measure": "mean over query positions of the Jensen-Shannon divergence (bits) "
            "between the scenarios' mean attention rows, restricted to keys with data in both "
            "and renormalised",
            "align": "start",
            "models": {m.model.name: m.model.provenance for m in all_maps},
            "prompt_sets": _sets_info(prompt_sets),
            **(info or {}),
        }
    )
    return ds


def save(ds: xr.Dataset, run_dir: str | Path) -> Path:
    """Put the attention variables into RUN/trace.zarr, replacing earlier ones (or a new store)."""
    path = store.store_path(run_dir)
    if path is None:
        ds = ds.assign_attrs(
            provenance=json.dumps(
                {"jbtrace_version": jbtrace.__version__, **json.loads(ds.attrs["attention"])}
            )
        )
        return store.write(ds, run_dir)
    run = store.open_run(run_dir)
    runs.check_same_inputs(store.provenance(run), json.loads(ds.attrs["attention"]), str(path))
    if "mean" not in run:  # a store only attention wrote: replace it
        return save(ds, _fresh(run_dir))
    for dim in ("model", "scenario"):
        extra = [str(v) for v in ds[dim].values if v not in run[dim].values]
        if extra:
            raise UserError(
                f"{dim} {', '.join(extra)} is not in {path} "
                f"(it has {', '.join(map(str, run[dim].values))}): "
                f"use the same names as the extract that wrote it, or another --out"
            )
    run = run.drop_vars([v for v in (*VARIABLES, *DIMS) if v in run.variables])
    ds = ds.drop_vars(["model_label", "random_init"]).reindex(
        model=run.model, scenario=run.scenario
    )
    ds["attn_count"] = ds["attn_count"].fillna(0).astype(np.int64)
    merged = run.merge(ds, join="left")
    merged.attrs = {**run.attrs, "attention": ds.attrs["attention"]}
    return store.write(merged, run_dir)


def _fresh(run_dir) -> Path:
    """Remove an attention-only store so that ``save`` writes a new one."""
    import shutil

    shutil.rmtree(Path(run_dir) / store.STORE)
    return Path(run_dir)


def run(
    run_dir: str | Path,
    load: Callable[[str, str | None], LoadedModel],
    specs: list[tuple[str, str | None]],
    prompt_sets: list[PromptSet],
    *,
    layers: list[int] | str = "auto",
    heads: str | int = "mean",
    options: ExtractOptions | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    info: dict | None = None,
    checkpoint=None,
) -> list[AttentionMaps]:
    """Load each model (``load(spec, label)``), collect its maps, write them into RUN/trace.zarr.

    With a ``checkpoint.Checkpoint``, each model's maps are saved when it is done and a
    rerun skips the models already done.
    """
    options = options or ExtractOptions()
    if len(prompt_sets) < 2:
        raise UserError("attention maps compare two prompt sets: give two --prompts")
    path, existing = store.store_path(run_dir), {}
    if (
        path is not None
    ):  # before any model runs: the run's prompt sets (and below, models) must be these
        with xr.open_zarr(path) as ds:
            existing = store.provenance(ds)
        runs.check_same_inputs(existing, {"prompt_sets": _sets_info(prompt_sets)}, str(path))
    results, names = [], set()
    total = sum(len(range(options.shard[0], len(p), options.shard[1])) for p in prompt_sets)
    for spec, label in specs:
        key = f"{spec}-{label}"
        saved = checkpoint.load(key) if checkpoint else None
        maps = maps_from_state(*saved) if saved else None
        if maps is None:
            lm = load(spec, label)
            runs.check_same_inputs(existing, {"models": {lm.name: lm.provenance}}, str(path))
            if not lm.has_attention:
                raise UserError(f"not applicable: {lm.name} has no attention")
            passes = 2 if layers == "auto" and heads != "mean" else 1
            advance = progress(lm.name, total * passes) if progress else None
            maps = collect(lm, prompt_sets, layers, heads, options, advance)
            if checkpoint:
                checkpoint.save(key, *maps_state(maps))
        if maps.model.name in names:
            raise UserError(
                f"two models are named {maps.model.name!r}: label them with --model-name"
            )
        names.add(maps.model.name)
        results.append(maps)
    save(to_dataset(results, prompt_sets, info), run_dir)
    if checkpoint:
        checkpoint.clear()
    return results


def _sets_info(prompt_sets: list[PromptSet]) -> list[dict]:
    return [
        {"name": p.name, "source": p.source, "sha256": p.sha256, "size": len(p)}
        for p in prompt_sets
    ]


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
        sums={n: torch.from_numpy(arrays[f"sums/{n}"]) for n in meta["scenarios"]},
        counts={n: torch.from_numpy(arrays[f"counts/{n}"]) for n in meta["scenarios"]},
        divergence=divergence,
    )
