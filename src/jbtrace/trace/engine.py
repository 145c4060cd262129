"""Where extraction runs: in this process (``local``) or on a Ray cluster (``ray``), with
checkpoints either way.

``local`` loads each model in turn and folds every batch into its accumulators,
saving their exact state every few minutes (see ``checkpoint``). ``ray`` splits each
prompt set into shards (prompt index K modulo N, as ``extract --shard K/N``) and runs
them on actors, one per worker, each holding one replica of the model; an actor returns
its shard's exact accumulator state, which the driver saves as a checkpoint and merges
(Chan's pairwise update, in shard order). A worker that dies is restarted and its shard
retried by Ray itself (``max_restarts``, ``max_task_retries``). Ray is imported only here,
only when asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, load_model
from jbtrace.prompts import PromptSet
from jbtrace.trace.accumulate import Moments
from jbtrace.trace.checkpoint import Checkpoint, ExtractCheckpoint
from jbtrace.trace.extract import ExtractOptions, ModelTrace, ScenarioTrace, extract

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
RETRIES = 3  # restarts of a dead worker, and retries of the shard it held


@dataclass(frozen=True)
class ModelSpec:
    """How to load one model (everything ``load_model`` takes), so that a worker elsewhere can
    load it too."""

    spec: str
    name: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    seed: int = 0

    def load(self) -> LoadedModel:
        return load_model(
            self.spec, **{k: v for k, v in dataclasses.asdict(self).items() if k != "spec"}
        )

    def identity(self) -> dict:
        """What makes two runs' models the same model (for fingerprints)."""
        return {k: getattr(self, k) for k in ("spec", "name", "dtype", "revision", "seed")}


@dataclass(frozen=True)
class Engine:
    kind: str = "local"
    ray_address: str | None = None  # an existing cluster; None starts a local one
    workers: int | None = (
        None  # actors per model (default: the cluster's GPUs with --device cuda, else its CPUs)
    )
    shards: int | None = None  # shards per model (default: 4 per worker)

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise UserError(f"unknown engine {self.kind!r}: choose local or ray")
        if self.kind == "local" and (self.ray_address or self.workers or self.shards):
            raise UserError("--ray-address, --workers and --shards need --engine ray")
        for name in ("workers", "shards"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")


Progress = Callable[[str, int], Callable[[int], None]]


def extract_models(
    models: list[ModelSpec],
    prompt_sets: list[PromptSet],
    options: ExtractOptions,
    engine: Engine = Engine(),
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
) -> list[ModelTrace]:
    """Extract every model over every prompt set, on ``engine``, resuming from ``checkpoint``."""
    run = _extract_ray if engine.kind == "ray" else _extract_local
    traces, seen = [], set()
    total = sum(len(range(options.shard[0], len(p), options.shard[1])) for p in prompt_sets)
    for trace in run(models, prompt_sets, options, engine, checkpoint, progress, total):
        if trace.model.name in seen:
            raise UserError(
                f"two models are named {trace.model.name!r}: label them with --model-name"
            )
        seen.add(trace.model.name)
        traces.append(trace)
    return traces


def _extract_local(models, prompt_sets, options, engine, checkpoint, progress, total):
    for spec in models:
        lm = spec.load()
        advance = progress(lm.name, total) if progress else None
        hook = ExtractCheckpoint(checkpoint) if checkpoint else None
        trace = extract(lm, prompt_sets, options, progress=advance, checkpoint=hook)
        trace.model = describe(lm)  # the weights are not needed any more
        del lm
        yield trace


def describe(lm: LoadedModel) -> LoadedModel:
    """The model's facts without its weights and tokenizer (what the store records)."""
    return dataclasses.replace(lm, model=None, tokenizer=None)


# -------------------------------------------------------- exact states, for checkpoints and Ray

_MOMENTS = ("count", "mean", "m2", "nonfinite")
_PROMPTS = ("prompt_index", "prompt_values", "prompt_slope", "prompt_tokens", "truncated")


def trace_state(trace: ModelTrace) -> tuple[dict[str, np.ndarray], dict]:
    """A trace as arrays (exact float64 accumulator states, per-prompt values) and JSON metadata."""
    arrays = {}
    for name, st in trace.scenarios.items():
        for field in _MOMENTS:
            arrays[f"{name}/{field}"] = getattr(st.moments, field).cpu().numpy()
        for field in _PROMPTS:
            arrays[f"{name}/{field}"] = np.asarray(getattr(st, field))
    model = describe(trace.model)
    meta = {
        "model": {
            f.name: getattr(model, f.name)
            for f in dataclasses.fields(model)
            if f.name not in ("model", "tokenizer")
        },
        "scenarios": list(trace.scenarios),
        "n_positions": trace.n_positions,
        "tokens_processed": trace.tokens_processed,
        "tokens_padded": trace.tokens_padded,
    }
    return arrays, meta


def trace_from_state(
    arrays: dict[str, np.ndarray], meta: dict, options: ExtractOptions
) -> ModelTrace:
    model = LoadedModel(model=None, tokenizer=None, **meta["model"])
    trace = ModelTrace(
        model=model,
        options=options,
        n_positions=meta["n_positions"],
        tokens_processed=meta["tokens_processed"],
        tokens_padded=meta["tokens_padded"],
    )
    for name in meta["scenarios"]:
        moments = Moments(0)
        for field in _MOMENTS:
            setattr(moments, field, torch.from_numpy(np.array(arrays[f"{name}/{field}"])))
        trace.scenarios[name] = ScenarioTrace(
            moments, **{f: np.array(arrays[f"{name}/{f}"]) for f in _PROMPTS}
        )
    return trace


def merge_traces(shards: list[ModelTrace]) -> ModelTrace:
    """One model's shard traces (disjoint prompts) as the trace of all prompts: moments merged
    in order, rows by index."""
    first = shards[0]
    merged = ModelTrace(
        model=first.model,
        options=first.options,
        n_positions=first.n_positions,
        tokens_processed=sum(s.tokens_processed for s in shards),
        tokens_padded=sum(s.tokens_padded for s in shards),
    )
    for name in first.scenarios:
        parts = [s.scenarios[name] for s in shards]
        moments = Moments(parts[0].moments.count.numel())
        for part in parts:
            moments.merge(part.moments)
        index = np.concatenate([p.prompt_index for p in parts])
        order = np.argsort(index, kind="stable")
        rows = {
            f: np.concatenate([getattr(p, f) for p in parts], axis=-1)[..., order] for f in _PROMPTS
        }
        merged.scenarios[name] = ScenarioTrace(moments, **rows)
    return merged


# ------------------------------------------------------------------ Ray


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'jbtrace[ray]'") from None
    return ray


class _Worker:
    """A Ray actor: one replica of one model at a time; runs shards of the prompt sets and
    returns their exact states.

    The model is loaded on the first shard of each model (again after a restart), so one
    worker process serves every model of a run.
    """

    def __init__(self, test_env: dict[str, str]):
        os.environ.update(test_env)  # tests only: kill this worker at a named point (see hooks)
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.spec, self.lm = None, None

    def run(
        self,
        spec: ModelSpec,
        prompt_sets: list[PromptSet],
        options: ExtractOptions,
        shard: tuple[int, int],
    ):
        if spec != self.spec:
            self.spec, self.lm = (
                None,
                None,
            )  # free the previous model's memory before loading the next
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.lm, self.spec = spec.load(), spec
        trace = extract(self.lm, prompt_sets, dataclasses.replace(options, shard=shard))
        return shard[0], trace_state(trace)


def _worker_test_env() -> dict[str, str]:
    """JBTRACE_TEST_KILL_WORKER (and _ONCE) of the driver become a worker's JBTRACE_TEST_KILL
    (and _ONCE)."""
    env = {
        "JBTRACE_TEST_KILL": os.environ.get("JBTRACE_TEST_KILL_WORKER"),
        "JBTRACE_TEST_KILL_ONCE": os.environ.get("JBTRACE_TEST_KILL_ONCE"),
    }
    return {k: v for k, v in env.items() if v}


def _connect(ray, engine: Engine, device: str) -> tuple[int, bool]:
    """Join the cluster (or start a local one); return the number of workers per model and
    whether we started it."""
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            if engine.ray_address:
                ray.init(address=engine.ray_address, **kwargs)
            else:
                ray.init(num_cpus=engine.workers or os.cpu_count(), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(
                f"cannot start or reach the Ray cluster ({engine.ray_address or 'local'}): {error}"
            ) from None
        started = True
    resources = ray.cluster_resources()
    gpu = device.startswith("cuda") or device == "auto" and resources.get("GPU", 0) > 0
    have = int(resources.get("GPU" if gpu else "CPU", 0))
    if have < 1:
        raise UserError(f"the Ray cluster has no {'GPU' if gpu else 'CPU'} for a worker")
    return min(engine.workers or have, have), started


def _extract_ray(models, prompt_sets, options, engine, checkpoint, progress, total):
    ray = _ray()
    from ray.util import ActorPool

    if options.shard != (0, 1):
        raise UserError("--shard is for splitting by hand; --engine ray splits the prompts itself")
    workers, started = _connect(ray, engine, models[0].device)
    n_shards = min(
        engine.shards or 4 * workers, min(len(p) for p in prompt_sets)
    )  # no shard without prompts
    gpu = models[0].device.startswith("cuda") or models[0].device == "auto"
    Worker = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(_Worker)
    sets_ref = ray.put(prompt_sets)
    actors = []
    try:
        for spec in models:
            states, key = (
                {},
                lambda k, spec=spec: f"{spec.name or spec.spec}/shard-{k}-of-{n_shards}",
            )
            for k in range(n_shards):
                saved = checkpoint.load(key(k)) if checkpoint else None
                if saved is not None:
                    states[k] = saved
            advance = progress(spec.name or spec.spec, total) if progress else None
            sizes = [
                sum(len(range(k, len(p), n_shards)) for p in prompt_sets) for k in range(n_shards)
            ]
            if advance and states:
                advance(sum(sizes[k] for k in states))
            todo = [k for k in range(n_shards) if k not in states]
            actors += [
                Worker.options(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1).remote(
                    _worker_test_env()
                )
                for _ in range(min(workers, len(todo)) - len(actors))
            ]
            if todo:
                pool = ActorPool(actors[: len(todo)])
                for k, state in pool.map_unordered(
                    lambda a, k, spec=spec: a.run.remote(spec, sets_ref, options, (k, n_shards)),
                    todo,
                ):
                    states[k] = state
                    if checkpoint:
                        checkpoint.save(key(k), *state)
                    if advance:
                        advance(sizes[k])
            merged = merge_traces([trace_from_state(*states[k], options) for k in range(n_shards)])
            merged.options = options
            yield merged
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
