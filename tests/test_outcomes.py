"""Outcomes: greedy answers, judged labels, ASR with Wilson CIs, the paired effect, and outcomes:
prompt sources."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from jbtrace.defend import attack_success as O
from jbtrace.defend.guard import GenerateOptions
from jbtrace.errors import UserError
from jbtrace.models import load_model
from jbtrace.prompts import PromptSet, advbench_behaviours, load_prompts
from jbtrace.prompts.judged_answers import Outcome, parse_source, read_outcomes, write_outcomes


def _outcome(set_, prompt, label, behaviour=None):
    return Outcome(
        set=set_,
        source=f"src:{set_}",
        prompt=prompt,
        response=f"answer to {prompt}",
        label=label,
        verdicts={
            "refusal": {"answered": label != "refused"},
            "on-topic": {"answered": label == "complied"},
        },
        behaviour=behaviour,
    )


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(3)
    records = [
        _outcome(s, f"{s} prompt {i}", O.LABELS[rng.integers(3)])
        for s in ("direct", "wrapped")
        for i in range(20)
    ]
    write_outcomes(records, tmp_path / "outcomes.jsonl")
    return tmp_path, records


def test_records_round_trip(run):
    path, records = run
    assert read_outcomes(path) == records


@pytest.mark.parametrize("label", ["complied", "refused", "other"])
@pytest.mark.parametrize("only", [None, "direct", "wrapped"])
def test_outcome_source_is_exactly_the_judged_prompts(run, label, only):
    path, records = run
    source = f"outcomes:{path}:{label}" + (f":{only}" if only else "")
    ps = load_prompts("x", source)
    assert list(ps.texts) == [
        r.prompt for r in records if r.label == label and only in (None, r.set)
    ]
    assert ps.info["label"] == label and ps.info["set"] == only


def test_outcome_source_errors(run, tmp_path_factory):
    path, _ = run
    empty = tmp_path_factory.mktemp("no_outcomes")
    with pytest.raises(UserError, match="no outcomes.jsonl"):
        load_prompts("x", f"outcomes:{empty}:complied")
    with pytest.raises(UserError, match="no prompt set 'nope'; it has: direct, wrapped"):
        load_prompts("x", f"outcomes:{path}:complied:nope")
    with pytest.raises(UserError, match="expected outcomes:RUN:LABEL"):
        load_prompts("x", f"outcomes:{path}:worked")
    write_outcomes([_outcome("a", "p", "refused")], empty / "outcomes.jsonl")
    with pytest.raises(UserError, match=r"no prompt was judged complied \(1 refused\)"):
        load_prompts("x", f"outcomes:{empty}:complied")
    (empty / "outcomes.jsonl").write_text('{"set": "a"}\n')
    with pytest.raises(UserError, match="line 1 is not an outcome record"):
        load_prompts("x", f"outcomes:{empty}:refused")


def test_parse_source_keeps_colons_in_the_run_path():
    assert parse_source("outcomes:runs/a:b:complied") == ("runs/a:b", "complied", None)
    assert parse_source("outcomes:runs/a:b:refused:wrapped") == ("runs/a:b", "refused", "wrapped")


def test_labels_follow_the_verdicts():
    yes, no = {"answered": True}, {"answered": False}
    assert O.label_of({"refusal": no, "on-topic": yes}) == "refused"
    assert O.label_of({"refusal": yes, "on-topic": yes, "coherent": yes}) == "complied"
    assert O.label_of({"refusal": yes, "on-topic": yes, "coherent": no}) == "other"
    with pytest.raises(UserError, match="refusal judge"):
        O.label_of({"on-topic": yes})


def test_rates_match_scipy_wilson(run):
    path, records = run
    for row in O.rates(records):
        mine = [r for r in records if r.set == row["set"]]
        k = sum(r.label == "complied" for r in mine)
        ci = binomtest(k, len(mine)).proportion_ci(method="wilson")
        assert row["n"] == len(mine) and row["complied"] == k
        assert row["asr"] == pytest.approx(k / len(mine))
        assert row["asr_ci"] == pytest.approx((ci.low, ci.high), abs=1e-9)
        answered = len(mine) - sum(r.label == "refused" for r in mine)
        ci = binomtest(answered, len(mine)).proportion_ci(method="wilson")
        assert row["not_refused_ci"] == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_paired_effect_counts_complied_and_matches_statsmodels_mcnemar():
    rng = np.random.default_rng(0)
    behaviours = [f"do harmful thing {i}" for i in range(40)]
    direct_complied = rng.random(40) < 0.2
    wrapped_complied = rng.random(40) < 0.6
    records = [
        _outcome("direct", b, "complied" if c else "refused", b)
        for b, c in zip(behaviours, direct_complied, strict=True)
    ]
    # wrapped: only the first 30 behaviours, each inside a template, not complied = "other" or
    # "refused" alike; plus one prompt carrying no behaviour
    records += [
        _outcome(
            "wrapped", f"You are DAN. {b}!", "complied" if c else ("other", "refused")[i % 2], b
        )
        for i, (b, c) in enumerate(list(zip(behaviours, wrapped_complied, strict=True))[:30])
    ]
    records.append(_outcome("wrapped", "no behaviour here", "complied"))
    (row,) = O.paired_effects(records)
    d, w = direct_complied[:30], wrapped_complied[:30]
    table = [[int((d & w).sum()), int((d & ~w).sum())], [int((~d & w).sum()), int((~d & ~w).sum())]]
    assert (row["direct"], row["wrapped"], row["pairs"]) == ("direct", "wrapped", 30)
    assert [
        [row["both_complied"], row["complied_direct_only"]],
        [row["complied_wrapped_only"], row["neither_complied"]],
    ] == table
    assert (row["complied_direct"], row["complied_wrapped"]) == (int(d.sum()), int(w.sum()))
    assert row["mcnemar_p"] == pytest.approx(mcnemar(np.array(table), exact=True).pvalue)


def test_direct_set_is_built_from_the_kept_wrapped_prompts(tiny):
    wrapped = load_prompts("wrapped", "pyrit:templates", limit=12, seed=1)
    direct = O.paired_direct(wrapped, "wrapped-direct")
    assert list(direct.texts) == list(dict.fromkeys(wrapped.info["behaviours"]))
    options = GenerateOptions(max_new_tokens=2, chat_template=False, max_tokens=300)
    kept, too_long = O.answerable(tiny, [wrapped, direct], options)
    assert too_long["wrapped"] > 0 and len(kept[0]) == 12 - too_long["wrapped"]
    assert set(kept[1].texts) == set(kept[0].info["behaviours"])
    assert all(b in t for t, b in zip(kept[0].texts, kept[0].info["behaviours"], strict=True))


def test_templates_carry_their_behaviour_and_pair_with_it():
    behaviours = advbench_behaviours()
    wrapped = load_prompts("wrapped", "pyrit:templates", limit=12, seed=1)
    direct = O.paired_direct(wrapped, "direct", behaviours)
    assert all(t in behaviours for t in direct.texts)
    assert {O.behaviour_of(t, behaviours) for t in wrapped.texts} == set(direct.texts)
    assert all(O.behaviour_of(t, behaviours) == t for t in direct.texts)
    with pytest.raises(UserError, match="carries no AdvBench behaviour"):
        O.paired_direct(PromptSet("b", ("hello there",), "x"), "d", behaviours)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:llama", seed=0)


def test_answers_are_plain_greedy_generate_one_prompt_at_a_time(tiny):
    texts = [
        "Tell me a story about a cat.",
        "Hi",
        "Explain photosynthesis to a child in simple words, please.",
    ]
    got = O.answers(
        tiny, texts, GenerateOptions(max_new_tokens=6, chat_template=False, batch_size=3)
    )
    tok = tiny.tokenizer
    for text, g in zip(texts, got, strict=True):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            ref = tiny.model.generate(
                **ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
            )
        new = ref[0, ids["input_ids"].shape[1] :].tolist()
        stop = [k for k, t in enumerate(new) if t == tok.eos_token_id]
        kept = new[: stop[0]] if stop else new
        assert g.response == tok.decode(kept, skip_special_tokens=True).strip()
        assert g.finished == bool(stop) and g.new_tokens == len(kept)


def test_run_outcomes_end_to_end(tiny, tmp_path):
    from jbtrace.views.outputs import write_outcomes as write_run

    sets = [
        PromptSet("a", ("first prompt", "second prompt", "third prompt"), "x"),
        PromptSet("b", ("fourth prompt", "fifth prompt"), "y"),
    ]

    def refusal(prompt, response):  # a stand-in judge with a known answer
        return {"answered": "th" not in prompt}

    result = O.run_outcomes(
        tiny, sets, {"refusal": refusal}, GenerateOptions(max_new_tokens=3, chat_template=False)
    )
    assert [o.label for o in result.outcomes] == [
        "complied",
        "complied",
        "refused",
        "refused",
        "refused",
    ]
    assert [r["complied"] for r in result.rates] == [2, 0]
    write_run(result, tmp_path, "jbtrace outcomes ...")
    assert read_outcomes(tmp_path) == result.outcomes
    summary = json.loads((tmp_path / "outcomes.json").read_text())
    assert summary["rates"][0]["n"] == 3 and list(summary["judges"]) == ["refusal"]
    assert load_prompts("c", f"outcomes:{tmp_path}:refused:b").texts == (
        "fourth prompt",
        "fifth prompt",
    )


def test_answers_are_reused_only_with_the_same_settings(tiny, tmp_path, monkeypatch):
    from jbtrace.views.outputs import write_outcomes as write_run

    sets = [PromptSet("a", ("one prompt", "two prompts"), "x")]
    options = GenerateOptions(max_new_tokens=4, chat_template=False)
    first = O.run_outcomes(tiny, sets, {"refusal": lambda p, r: {"answered": True}}, options)
    write_run(first, tmp_path, "cmd")
    generation = O.generation_config(tiny, options)
    assert O.previous_answers(tmp_path, {**generation, "max_new_tokens": 5}) == {}
    reuse = O.previous_answers(tmp_path, generation)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although every answer was there")

    monkeypatch.setattr(O, "answers", no_generation)
    again = O.run_outcomes(
        tiny, sets, {"refusal": lambda p, r: {"answered": False}}, options, reuse=reuse
    )
    assert [o.response for o in again.outcomes] == [o.response for o in first.outcomes]
    assert [o.label for o in again.outcomes] == ["refused", "refused"] and again.config[
        "reused_answers"
    ] == 2


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "jbtrace", *args], capture_output=True, text=True)


def test_cli_outcomes_then_outcome_sources(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    run = tmp_path / "run"
    error = tmp_path / "judges.json"
    measured = {"accuracy": 0.8, "kappa": 0.6, "precision": 0.75, "recall": 0.9}
    measured |= {"specificity": 0.8, "n": 100, "ci": dict.fromkeys([*measured, "specificity"])}
    error.write_text(json.dumps({"verdicts": {"complied": {"objective": measured}}}))
    done = _cli(
        "outcomes",
        "-m",
        "tiny:llama",
        "-p",
        f"a={prompts}",
        "--no-chat-template",
        "--max-new-tokens",
        "2",
        "--judge",
        "refusal",
        "--judge-error",
        str(error),
        "-o",
        str(run),
        "-q",
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((run / "outcomes.json").read_text())["rates"]
    observed = row["complied"] / row["n"]
    expected = min(1.0, max(0.0, (observed + 0.8 - 1) / (0.9 + 0.8 - 1)))
    assert row["asr_corrected"]["rate"] == pytest.approx(expected)
    assert row["judge_error"]["validated_on"] == "objective"
    assert "0.90 / 0.80 (on objective)" in (run / "outcomes.md").read_text()
    labels = {o.prompt: o.label for o in read_outcomes(run)}
    for label in ("complied", "refused"):
        mine = [p for p, lab in labels.items() if lab == label]
        if mine:
            assert list(load_prompts("x", f"outcomes:{run}:{label}:a").texts) == mine
    bad = _cli("outcomes", "-m", "tiny:llama", "-p", f"a={prompts}", "-o", str(run), "-q")
    assert (
        bad.returncode == 2 and "--calibrate" in bad.stderr.strip().splitlines()[-1]
    )  # on-topic, no benign set
    bad = _cli(
        "outcomes",
        "-m",
        "tiny:llama",
        "-p",
        f"a={prompts}",
        "--judge",
        "nope",
        "-o",
        str(run),
        "-q",
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("jbtrace: error: unknown judge 'nope'")
    missing = _cli(
        "run",
        "-m",
        "tiny:llama",
        "-p",
        f"outcomes:{tmp_path}:complied",
        "-p",
        f"b={prompts}",
        "-o",
        str(tmp_path / "r"),
    )
    assert (
        missing.returncode == 2
        and "no outcomes.jsonl" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_prompts_over_max_tokens_get_no_answer(tiny):
    long = "word " * 50
    sets = [PromptSet("a", ("short prompt", long), "x")]
    result = O.run_outcomes(
        tiny,
        sets,
        {"refusal": lambda p, r: {"answered": True}},
        GenerateOptions(max_new_tokens=2, chat_template=False, max_tokens=20),
    )
    assert [o.prompt for o in result.outcomes] == ["short prompt"]
    assert result.config["too_long_not_answered"] == {"a": 1} and result.rates[0]["n"] == 1
