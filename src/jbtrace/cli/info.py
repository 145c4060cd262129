"""datasets and models: what prompt sources and model specs are built in."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from jbtrace.cli.common import app, out

SOURCE_COLUMNS = (
    "source", "kind", "role", "family", "prompts", "words q1/med/q3", "licence", "written by",
    "package",
)  # fmt: skip


def source_cells(row: dict) -> list[str]:
    """One `list_sources` row as the cells of SOURCE_COLUMNS (lengths in words)."""
    name = row["source"] + "".join(f" (alias {a})" for a in row["aliases"])
    if row["available"]:
        size, words = str(row["size"]), "/".join(map(str, row["words"]))
    else:
        size, words = "not installed" if row.get("install") else "unavailable", ""
    return [
        name, row["kind"], row["role"], row["family"], size, words, row["licence"],
        row["written_by"], row["package"] or "",
    ]  # fmt: skip


def sources_markdown(rows: list[dict]) -> str:
    """The sources as a markdown table (what docs/prompts.md shows)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(SOURCE_COLUMNS) + " |", "|" + "---|" * len(SOURCE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in source_cells(r)) + " |" for r in rows]
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
    table = Table(*SOURCE_COLUMNS)
    for row in rows:
        table.add_row(*source_cells(row))
    out.print(table)
    for row in rows:
        if not row["available"]:
            out.print(f"{row['source']}: {row.get('error', '')}", highlight=False, markup=False)


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
