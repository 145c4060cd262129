"""Prompt files: the five file formats and how a record's text is found.

A reader turns a file's bytes into records (where, value): "line 3" and a string or a dict
of fields; `record_texts` picks each record's text (the `text_field`, else `text` or
`prompt`). Anything a user can get wrong raises `UserError` with one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jbtrace.errors import UserError

TEXT_FIELDS = ("text", "prompt")  # tried in this order when no text_field is given
JSON_LIST_KEYS = ("prompts", "data", "texts", "items", "examples", "rows", "records")

Records = list[tuple[str, Any]]  # (where, value): "line 3" and a str or a dict of fields


def pick_field(fields, text_field: str | None, where: str) -> str:
    wanted = (text_field,) if text_field else TEXT_FIELDS
    for name in wanted:
        if name in fields:
            return name
    have = ", ".join(map(str, fields)) or "none"
    asked = f"field {text_field!r}" if text_field else "a 'text' or 'prompt' field"
    raise UserError(f"{where}: no {asked}; fields are: {have} (choose one with --text-field)")


def record_texts(
    records: Records, text_field: str | None, where: str
) -> tuple[list[str], str | None]:
    """The raw text of each record (None for missing values) and the field used."""
    first = next((v for _, v in records if isinstance(v, dict)), None)
    name = pick_field(list(first), text_field, where) if first is not None else None
    texts = []
    for at, value in records:
        if isinstance(value, dict):
            if name not in value:
                raise UserError(
                    f"{where}: {at} has no field {name!r}; it has: {', '.join(map(str, value))}"
                )
            value = value[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = ""
        if not isinstance(value, str):
            raise UserError(
                f"{where}: {at}: the text is {type(value).__name__} {value!r:.40}, not a string"
            )
        texts.append(value)
    return texts, name


# ---------------------------------------------------------------- file formats


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x}"
            f" at byte offset {e.start}, line {line})"
        ) from None


def _lines(text: str) -> list[str]:
    """Split at \\n, \\r\\n or \\r only (str.splitlines also splits at U+2028, U+0085, ...)."""
    return re.split(r"\r\n?|\n", text)


def _read_jsonl(data: bytes, where: str) -> Records:
    records = []
    for i, line in enumerate(_lines(_decode(data, where)), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(value, (str, dict)):
            raise UserError(
                f"{where}: line {i} is a JSON {type(value).__name__}, not an object or string"
            )
        records.append((f"line {i}", value))
    return records


def _read_json(data: bytes, where: str) -> Records:
    try:
        value = json.loads(_decode(data, where))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    if isinstance(value, dict):
        lists = [k for k in value if isinstance(value[k], list)]
        key = next((k for k in JSON_LIST_KEYS if k in lists), lists[0] if len(lists) == 1 else None)
        if key is None:
            raise UserError(
                f"{where}: a JSON object needs one list of prompts"
                " (under e.g. 'prompts' or 'data'); "
                f"keys are: {', '.join(value) or 'none'}"
            )
        value = value[key]
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a JSON list of prompts, found a {type(value).__name__}")
    return [(f"item {i}", v) for i, v in enumerate(value, 1)]


def _read_csv(data: bytes, where: str) -> Records:
    reader = csv.DictReader(io.StringIO(_decode(data, where), newline=""))
    try:
        return [(f"line {reader.line_num}", row) for row in reader]
    except csv.Error as e:
        raise UserError(f"{where}: line {reader.line_num}: not valid CSV ({e})") from None


def _read_txt(data: bytes, where: str) -> Records:
    lines = _lines(_decode(data, where))
    return [(f"line {i}", line) for i, line in enumerate(lines, 1) if line.strip()]


def _read_parquet(data: bytes, where: str) -> Records:
    import pandas as pd

    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(
            f"{where}: could not read Parquet ({type(e).__name__}: {e})".splitlines()[0]
        ) from None
    columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        return []
    return [
        (f"row {i}", dict(zip(columns, row, strict=True)))
        for i, row in enumerate(frame.itertuples(index=False), 1)
    ]


READERS: dict[str, Callable[[bytes, str], Records]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".txt": _read_txt,
    ".parquet": _read_parquet,
}


def load_file(path: Path, text_field: str | None, where: str) -> tuple[list[str], dict]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"{where}: unsupported file type {path.suffix or '(none)'!r};"
            f" use one of {', '.join(READERS)}"
        )
    if not path.exists():
        raise UserError(f"{where}: file not found")
    if not path.is_file():
        raise UserError(f"{where}: not a file")
    records = reader(path.read_bytes(), where)
    if not records:
        raise UserError(f"{where}: no prompts found in the file")
    texts, used = record_texts(records, text_field, where)
    return texts, ({"text_field": used} if used else {})
