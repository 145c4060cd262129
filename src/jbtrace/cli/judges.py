"""`jbtrace judges validate`: how far the judges agree with people's labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jbtrace.cli.common import app, command_line, err, out

judges_app = typer.Typer(
    help="The judges of guard and outcomes: validate them.", no_args_is_help=True
)
app.add_typer(judges_app, name="judges")


@judges_app.command("validate")
def validate_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Where judges.json|md go.")] = Path(
        "runs/judges"
    ),
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your labels: JSON lines with prompt, response, label "
            "(refused / complied / other). Default: pyrit's people-labelled sets."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
):
    """Score each judge and the one verdict against people's labels; OUT/judges.json|md."""
    from jbtrace.commands.judges import validate_run

    run = validate_run(out_dir, data, seed=seed, command=command_line())
    for path in run.paths:
        out.print(f"wrote {path}", highlight=False)
    for t in run.result["targets"]:
        err.print(
            f"{t['verdict']} {t['metric']} on {t['data']}: {t['value']:.3f} "
            f"(target {t['target']}: {'met' if t['met'] else 'not met'})",
            highlight=False,
        )
