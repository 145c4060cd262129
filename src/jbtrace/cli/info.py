"""datasets and models: what prompt sources and model specs are built in."""

from __future__ import annotations

from rich.table import Table

from jbtrace.cli.common import app, out


@app.command("datasets")
def datasets_cmd():
    """List the built-in and package prompt sources and their sizes."""
    from jbtrace.prompts import list_sources

    table = Table("source", "prompts", "licence", "description")
    for row in list_sources():
        size = (
            str(row["size"]) if row.get("available") else f"not installed: {row.get('install', '')}"
        )
        table.add_row(row["source"], size, row.get("licence") or "", row.get("description", ""))
    out.print(table)


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
