"""Where a job over models runs (extraction, attention maps): in this process (``local``) or
on a Ray cluster (``ray``), with checkpoints either way.

A ``Job`` runs one loaded model over the prompt sets and turns its result into an exact
state and back; shard results merge (extraction: Chan's pairwise update; attention: sums).
``local`` loads each model in turn and runs the job, which saves its exact state every few
minutes (see ``checkpoint``). ``ray`` splits each prompt set into shards (prompt index K
modulo N, as ``extract --shard K/N``) and runs them on actors, one per worker, each holding
one replica of the model; an actor returns its shard's exact state, which the driver saves
as a checkpoint and merges in shard order. A worker that dies is restarted and its shard
retried by Ray itself (``max_restarts``, ``max_task_retries``). Ray is imported only here,
only when asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from jbtrace.errors import UserError
from jbtrace.models import LoadedModel, load_model
from jbtrace.prompts import PromptSet
from jbtrace.trace.accumulate import Moments
from jbtrace.trace.checkpoint import MOMENTS, Checkpoint, ExtractCheckpoint
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
    attn_implementation: str | None = None  # "eager" for attention maps with --eager

    def load(self) -> LoadedModel:
        return load_model(
            self.spec, **{k: v for k, v in dataclasses.asdict(self).items() if k != "spec"}
        )

    def identity(self) -> dict:
        """What makes two runs' models the same model (for fingerprints)."""
        keys = ("spec", "name", "dtype", "revision", "seed")
        extra = ("attn_implementation",) if self.attn_implementation else ()
        return {k: getattr(self, k) for k in keys + extra}


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


class Job(Protocol):
    """What the engine runs on each model: one pass over the prompt sets, with exact states."""

    tag: str  # part of its checkpoint keys ("" for extraction, whose keys keep their layout)

    def run(
        self,
        lm: LoadedModel,
        prompt_sets: list[PromptSet],
        options: ExtractOptions,
        progress: Callable[[int], None] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Any: ...

    def state(self, result) -> tuple[dict[str, np.ndarray], dict]: ...

    def from_state(self, arrays: dict[str, np.ndarray], meta: dict, options: ExtractOptions): ...

    def merge(self, results: list) -> Any: ...

    def name(self, result) -> str: ...


@dataclass(frozen=True)
class Extraction:
    """The job of ``extract``: per-cell moments and per-prompt values (a ``ModelTrace``)."""

    tag: str = ""

    def run(self, lm, prompt_sets, options, progress=None, checkpoint=None) -> ModelTrace:
        hook = ExtractCheckpoint(checkpoint) if checkpoint else None
        trace = extract(lm, prompt_sets, options, progress=progress, checkpoint=hook)
        trace.model = describe(lm)  # the weights are not needed any more
        return trace

    def state(self, trace):
        return trace_state(trace)

    def from_state(self, arrays, meta, options):
        return trace_from_state(arrays, meta, options)

    def merge(self, traces):
        return merge_traces(traces)

    def name(self, trace):
        return trace.model.name


def extract_models(
    models: list[ModelSpec],
    prompt_sets: list[PromptSet],
    options: ExtractOptions,
    engine: Engine = Engine(),
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
) -> list[ModelTrace]:
    """Extract every model over every prompt set, on ``engine``, resuming from ``checkpoint``."""
    return run_models(Extraction(), models, prompt_sets, options, engine, checkpoint, progress)


def run_models(
    job: Job,
    models: list[ModelSpec],
    prompt_sets: list[PromptSet],
    options: ExtractOptions,
    engine: Engine = Engine(),
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
) -> list:
    """Run ``job`` on every model over every prompt set, on ``engine``, resuming from
    ``checkpoint``; one result per model, in order."""
    run = _run_ray if engine.kind == "ray" else _run_local
    results, seen = [], set()
    total = sum(len(range(options.shard[0], len(p), options.shard[1])) for p in prompt_sets)
    for result in run(job, models, prompt_sets, options, engine, checkpoint, progress, total):
        name = job.name(result)
        if name in seen:
            raise UserError(f"two models are named {name!r}: label them with --model-name")
        seen.add(name)
        results.append(result)
    return results


def _run_local(job, models, prompt_sets, options, engine, checkpoint, progress, total):
    for spec in models:
        lm = spec.load()
        advance = progress(lm.name, total) if progress else None
        result = job.run(lm, prompt_sets, options, advance, checkpoint)
        del lm
        yield result


def describe(lm: LoadedModel) -> LoadedModel:
    """The model's facts without its weights and tokenizer (what the store records)."""
    return dataclasses.replace(lm, model=None, tokenizer=None)


# -------------------------------------------------------- exact states, for checkpoints and Ray

_PROMPTS = ("prompt_index", "prompt_values", "prompt_slope", "prompt_tokens", "truncated")


def trace_state(trace: ModelTrace) -> tuple[dict[str, np.ndarray], dict]:
    """A trace as arrays (exact float64 accumulator states, per-prompt values) and JSON metadata."""
    arrays = {}
    for name, st in trace.scenarios.items():
        for field in MOMENTS:
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
        "chat_template": trace.options.chat_template,  # as resolved for the model
    }
    return arrays, meta


def trace_from_state(
    arrays: dict[str, np.ndarray], meta: dict, options: ExtractOptions
) -> ModelTrace:
    model = LoadedModel(model=None, tokenizer=None, **meta["model"])
    resolved = meta.get("chat_template", options.chat_template)  # older states lack it
    trace = ModelTrace(
        model=model,
        options=dataclasses.replace(options, chat_template=resolved),
        n_positions=meta["n_positions"],
        tokens_processed=meta["tokens_processed"],
        tokens_padded=meta["tokens_padded"],
    )
    for name in meta["scenarios"]:
        moments = Moments(0)
        for field in MOMENTS:
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
    """A Ray actor: one replica of one model at a time; runs a job on shards of the prompt sets
    and returns their exact states.

    The model is loaded on the first shard of each model (again after a restart), so one
    worker process serves every model of a run.
    """

    def __init__(self, test_env: dict[str, str]):
        os.environ.update(test_env)  # tests only: kill this worker at a named point (see hooks)
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.spec, self.lm = None, None

    def run(
        self,
        job: Job,
        spec: ModelSpec,
        prompt_sets: list[PromptSet],
        options: ExtractOptions,
        shard: tuple[int, int],
    ):
        if spec != self.spec:
            self.spec, self.lm = None, None  # free the previous model's memory before the next
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.lm, self.spec = spec.load(), spec
        result = job.run(self.lm, prompt_sets, dataclasses.replace(options, shard=shard))
        return shard[0], job.state(result)


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


def _run_ray(job, models, prompt_sets, options, engine, checkpoint, progress, total):
    ray = _ray()

    if options.shard != (0, 1):
        raise UserError("--shard is for splitting by hand; --engine ray splits the prompts itself")
    workers, started = _connect(ray, engine, models[0].device)
    n_shards = min(
        engine.shards or 4 * workers, min(len(p) for p in prompt_sets)
    )  # no shard without prompts
    gpu = models[0].device.startswith("cuda") or models[0].device == "auto"
    Worker = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(_Worker)
    sets_ref = ray.put(prompt_sets)
    sizes = [sum(len(range(k, len(p), n_shards)) for p in prompt_sets) for k in range(n_shards)]
    actors = []

    def new_actors(n):
        options = dict(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1)
        return [Worker.options(**options).remote(_worker_test_env()) for _ in range(n)]

    try:
        for spec in models:
            prefix = "/".join(filter(None, (spec.name or spec.spec, job.tag)))
            keys = [f"{prefix}/shard-{k}-of-{n_shards}" for k in range(n_shards)]
            states = {k: checkpoint.load(keys[k]) for k in range(n_shards)} if checkpoint else {}
            states = {k: state for k, state in states.items() if state is not None}
            advance = progress(spec.name or spec.spec, total) if progress else None
            if advance and states:
                advance(sum(sizes[k] for k in states))
            todo = [k for k in range(n_shards) if k not in states]
            actors += new_actors(min(workers, len(todo)) - len(actors))
            for k, state in _map_shards(ray, actors, todo, job, spec, sets_ref, options, n_shards):
                states[k] = state
                if checkpoint:
                    checkpoint.save(keys[k], *state)
                if advance:
                    advance(sizes[k])
            yield job.merge([job.from_state(*states[k], options) for k in range(n_shards)])
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _map_shards(ray, actors, todo, job, spec, sets_ref, options, n_shards):
    """(shard, state) as the actors finish them; a UserError in a worker stays one line."""
    from ray.util import ActorPool

    if not todo:
        return
    pool = ActorPool(actors[: len(todo)])
    try:
        yield from pool.map_unordered(
            lambda a, k: a.run.remote(job, spec, sets_ref, options, (k, n_shards)), todo
        )
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise UserError(str(error.cause)) from None
        raise
