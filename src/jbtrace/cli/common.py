"""What the commands share: the app, consoles, option types, the option groups as typer
options (`groups`), the progress bar."""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jbtrace.commands.prompts import parse_shard

app = typer.Typer(
    help="See and measure what a jailbreak does inside a language model: layer × position heatmaps "
    "(Benign, Jailbreak, Difference), statistics, attention maps and detectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# Options shared by the commands that read prompts and run models.
Prompts = Annotated[
    list[str],
    typer.Option(
        "--prompts",
        "-p",
        help=(
            "NAME=SOURCE, repeatable; the first two are compared (B − A). SOURCE: a "
            ".jsonl/.json/.csv/.txt/.parquet file, builtin:benign[:SOURCE] (people's requests), "
            "builtin:jailbreak:FAMILY, builtin:harmful:SOURCE, builtin:eval:SET (evaluation "
            "only), builtin:benign-synthetic, hf:NAME[:split], outcomes:RUN:complied|refused[:SET] "
            "(prompts judged by `jbtrace outcomes`); `jbtrace datasets` lists them."
        ),
    ),
]
TextField = Annotated[
    str | None,
    typer.Option(help="Field or column holding the prompt text (default: text or prompt)."),
]
Limit = Annotated[
    int | None, typer.Option(help="Seeded random sample of at most N prompts per set.")
]
Seed = Annotated[int, typer.Option(help="Seed for sampling and random-init models.")]
Model = Annotated[
    list[str],
    typer.Option(
        "--model",
        "-m",
        help=(
            "Model spec, repeatable: tiny:gptj|llama|mistral|mamba2, "
            "builtin:smollm2|gemma3|minilm, gguf:PATH or FILE.gguf, a local directory or a hub "
            "id (see `jbtrace models`)."
        ),
    ),
]
ModelName = Annotated[list[str] | None, typer.Option(help="Label for each --model, in order.")]
Dtype = Annotated[
    str | None,
    typer.Option(
        help=(
            "float32, bfloat16, float16 or float64 (default: float32; a builtin model's own "
            "default, e.g. bfloat16 for builtin:qwen2.5-coder-1.5b)."
        )
    ),
]
Device = Annotated[
    str, typer.Option(help="cpu, cuda or auto (auto spreads a large model over devices).")
]
Revision = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")]
AllowPickle = Annotated[
    bool, typer.Option(help="Allow pickle (.bin) weights; only for files you trust.")
]
RemoteCode = Annotated[
    bool, typer.Option(help="Run the model repository's own code (off unless asked).")
]
MaxTokens = Annotated[
    int, typer.Option(help="Truncate prompts to this many tokens (counted and recorded).")
]
BatchSize = Annotated[int, typer.Option(help="Prompts per batch (batches are built by length).")]
PaddingSide = Annotated[str, typer.Option(help="left or right; padding is never counted.")]
ChatTemplate = Annotated[
    bool | None,
    typer.Option(
        "--chat-template/--no-chat-template",
        help=(
            "Wrap each prompt in the tokenizer's chat template (default: on for models whose "
            "tokenizer has one, i.e. instruction-tuned models; recorded in provenance)."
        ),
        show_default=False,
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        help=(
            "Replace what --out holds (a finished run, or a partial run of another command, "
            "prompt set or model); removes its store, figures, comparisons and checkpoints. "
            "Without it, rerunning the same command resumes."
        )
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Run directory (writes RUN/trace.zarr, RUN/run.json).")
]
Stat = Annotated[
    list[str] | None,
    typer.Option(
        "--stat",
        help=(
            "Statistic(s): log_norm (default), norm, mean, rms, max_abs, cos_prev, attn_entropy, "
            "attn_sink (attention statistics)."
        ),
    ),
]
Align = Annotated[
    str, typer.Option(help="start (i-th token), end (from the last token) or relative (bins).")
]
Bins = Annotated[
    int, typer.Option(help="Number of relative-position bins (with --align relative).")
]
MinCount = Annotated[int, typer.Option(help="Mask cells reached by fewer prompts than this.")]
Positions = Annotated[
    str | None, typer.Option(help="Crop positions, START:END (end exclusive), e.g. 0:448.")
]

Bucket = Annotated[bool, typer.Option(help="Batch prompts of similar length together.")]
Shard = Annotated[
    str,
    typer.Option(
        help="K/N: only prompts whose index is K modulo N (merge shards with `jbtrace merge`)."
    ),
]
EngineKind = Annotated[
    str,
    typer.Option(
        "--engine",
        help=(
            "local (this process) or ray (shards on Ray workers, one model replica each; pip "
            "install 'jbtrace[ray]')."
        ),
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="With --engine ray: address of an existing cluster (default: start a local one)."
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        help=(
            "With --engine ray: workers (model replicas) per model (default: the cluster's "
            "GPUs with --device cuda, else its CPUs)."
        )
    ),
]
Shards = Annotated[
    int | None,
    typer.Option(
        help=(
            "With --engine ray: shards per model (default: 4 per worker); each finished "
            "shard is checkpointed."
        )
    ),
]


REQUIRED = inspect.Parameter.empty  # a Converted option's default: the option must be given


@dataclasses.dataclass(frozen=True)
class Converted:
    """A group field whose option reads differently: its type, the option's default (which
    keeps the group's value), and how another value of the option becomes the field's."""

    type: Any
    default: Any
    parse: Callable[[Any], Any]


# The option of each field of an option group (commands.options, ExtractOptions, Engine), by name.
OPTIONS: dict[str, Any] = {
    "prompts": Prompts,
    "text_field": TextField,
    "limit": Limit,
    "model": Model,
    "model_name": ModelName,
    "dtype": Dtype,
    "device": Device,
    "revision": Revision,
    "allow_pickle": AllowPickle,
    "trust_remote_code": RemoteCode,
    "out_dir": Out,
    "overwrite": Overwrite,
    "seed": Seed,
    "stats": Converted(Stat, None, tuple),
    "align": Align,
    "bins": Bins,
    "max_tokens": MaxTokens,
    "batch_size": BatchSize,
    "padding_side": PaddingSide,
    "bucket": Bucket,
    "chat_template": ChatTemplate,
    "shard": Converted(Shard, "0/1", parse_shard),
    "kind": EngineKind,
    "ray_address": RayAddress,
    "workers": Workers,
    "shards": Shards,
}


def groups(**only: tuple[str, ...] | dict[str, Any]):
    """Give a typer command one option per field of each option group it takes (a parameter
    whose type is a dataclass), and call it with the group built from them. The fields are
    those with an entry in OPTIONS, or just ``only[parameter]``: names, or a dict from name to
    the command's own option type (None: OPTIONS'). The parameter's default (a group) gives
    the options' defaults, so a command can differ, e.g. ``run: RunOptions = DETECT_RUN``."""

    def decorate(command):
        hints = get_type_hints(command, include_extras=True)
        params, built = [], {}
        for p in inspect.signature(command).parameters.values():
            kind = hints[p.name]
            if not dataclasses.is_dataclass(kind):
                params.append(p.replace(kind=p.KEYWORD_ONLY, annotation=kind))
                continue
            group = kind() if p.default is p.empty else p.default
            chosen = only.get(p.name) or [f.name for f in dataclasses.fields(kind)]
            types = chosen if isinstance(chosen, dict) else dict.fromkeys(chosen)
            options = {n: t or OPTIONS[n] for n, t in types.items() if t or n in OPTIONS}
            built[p.name] = (group, options)
            params += [_parameter(n, option, getattr(group, n)) for n, option in options.items()]
        taken = [p.name for p in params]
        if len(set(taken)) < len(taken):
            raise TypeError(f"{command.__name__}: two options of one name among {taken}")

        def call(**values):
            given = {g: {n: values.pop(n) for n in options} for g, (_, options) in built.items()}
            for g, (group, options) in built.items():
                fields = {n: _parse(options[n], v, getattr(group, n)) for n, v in given[g].items()}
                values[g] = dataclasses.replace(group, **fields)
            return command(**values)

        call.__name__, call.__doc__ = command.__name__, command.__doc__
        call.__signature__ = inspect.Signature(params)
        return call

    return decorate


def _parameter(name: str, option, default) -> inspect.Parameter:
    if isinstance(option, Converted):
        option, default = option.type, option.default
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default
    )


def _parse(option, value, default):
    """The field's value from the option's: as given, or converted (its default: ``default``)."""
    if not isinstance(option, Converted):
        return value
    return default if value == option.default else option.parse(value)


@contextmanager
def progress_bar(quiet: bool):
    """A rich progress bar over prompts; yields ``start(description, total) -> advance``."""
    if quiet:
        yield lambda description, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:

        def start(description, total):
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield start


def say(line: str) -> None:
    """A line for the user on stderr (what the library reports through ``note``)."""
    err.print(line, highlight=False)


def command_line() -> str:
    return shlex.join(["jbtrace", *sys.argv[1:]])
