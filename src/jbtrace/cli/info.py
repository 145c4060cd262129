"""datasets and models: what prompt sources and model specs are built in."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from jbtrace.cli.common import app, out

SOURCE_COLUMNS = (
    "source", "kind", "role", "family", "prompts", "words q1/med/q3", "licence", "written by",
    "package",
)  # fmt: skip


def source_cells(row: dict, with_aliases: bool = True) -> list[str]:
    """One `list_sources` row as the cells of SOURCE_COLUMNS (lengths in words)."""
    name = row["source"] + "".join(f" (alias {a})" for a in row["aliases"]) * with_aliases
    if row["available"]:
        size, words = str(row["size"]), "/".join(map(str, row["words"]))
    else:
        size, words = "not installed" if row.get("install") else "unavailable", ""
    return [
        name, row["kind"], row["role"], row["family"], size, words, row["licence"],
        row["written_by"], row["package"] or "",
    ]  # fmt: skip


def sources_markdown(rows: list[dict]) -> str:
    """The sources as a markdown table, with their origin (what docs/prompts.md shows)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("*", "\\*")

    columns = (*SOURCE_COLUMNS, "origin")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(c) for c in [*source_cells(r), r["origin"]]) + " |" for r in rows
    ]
    return "\n".join(lines) + "\n"


@app.command("datasets")
def datasets_cmd(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every source's record and counts as JSON.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as markdown (docs/prompts.md).")
    ] = False,
):
    """Every named prompt source: kind, role (train / evaluation-only), family, prompts as loaded, length quartiles in words, licence, who wrote it, package==version."""  # noqa: E501
    from jbtrace.prompts import list_sources

    rows = list_sources()
    if as_json:
        typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    if markdown:
        typer.echo(sources_markdown(rows), nl=False)
        return
    table = Table(
        *SOURCE_COLUMNS,
        title="prompt sources (lengths in words)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for row in rows:
        table.add_row(*source_cells(row, with_aliases=False))
    # at its natural width (a narrow terminal wraps lines rather than names and numbers)
    natural = Measurement.get(out, out.options.update_width(1000), table).maximum
    Console(width=max(natural, out.width)).print(table)
    notes = [f"{a} is an alias of {row['source']}" for row in rows for a in row["aliases"]]
    notes += [f"{row['source']}: {row['error']}" for row in rows if not row["available"]]
    for line in notes:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("models")
def models_cmd():
    """List the built-in model specs, and the paper's models by hub id (`jbtrace demo --preset paper`)."""  # noqa: E501 (one-line help)
    from jbtrace.models import list_models, list_paper_models

    def count(n):
        return "" if n is None else f"{n / 1e6:.1f}M"

    rows = list_models()
    table = Table("spec", "blocks", "width", "params", "weights", "licence", title="built-in")
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(
            row["spec"],
            "" if row["layers"] is None else str(row["layers"]),
            "" if row["width"] is None else str(row["width"]),
            count(row["params"]),
            row["weights"],
            row["licence"],
        )
    out.print(table)
    for row in rows:
        extra = [row["install"]] if row.get("install") else []
        extra += [f"terms: {row['terms']}"] if row.get("terms") else []
        out.print(
            f"{row['spec']}: {'; '.join([row['description'], *extra])}",
            highlight=False,
            soft_wrap=True,
            emoji=False,
            markup=False,
        )
    paper = Table(
        "hub id",
        "blocks",
        "width",
        "params",
        "bfloat16",
        title="the paper's models (jbtrace demo --preset paper, once downloaded)",
    )
    paper.columns[0].no_wrap = True
    for row in list_paper_models():
        paper.add_row(
            row["spec"],
            str(row["layers"]),
            str(row["width"]),
            f"{row['params'] / 1e9:.2f}B",
            f"{row['memory_gb']:.1f} GB",
        )
    out.print(paper)
