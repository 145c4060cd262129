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
        size = str(row["size"]) if row.get("available") else f"not installed: {row.get('install', '')}"
        table.add_row(row["source"], size, row.get("licence") or "", row.get("description", ""))
    out.print(table)


@app.command("models")
def models_cmd():
    """List the built-in model specs."""
    from jbtrace.models import list_models

    table = Table("spec", "layers", "description")
    for row in list_models():
        table.add_row(row["spec"], "" if row["layers"] is None else str(row["layers"]), row["description"])
    out.print(table)
