"""guard.md: what the guard evaluation measured (``defend.evaluate.GuardResult``), as markdown."""

from __future__ import annotations

import re


def _pct(r: dict) -> str:
    return (
        f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] "
        f"({r['k']}/{r['n']})"
    )


def _cell(text: str, width: int = 240) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= width else text[:width] + " …"
    return text.replace("|", "\\|").replace("<", "&lt;") or "(empty)"


def code(text: str) -> str:
    """``text`` as one markdown code span, where nothing is markup (a file name, a command): the
    fence is longer than any run of backticks inside, and line breaks become spaces."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _header(s: dict, command: str) -> list[str]:
    det, byp, gen = s["detector"], s["bypass"], s["generation"]
    lines = [
        "# jbtrace guard",
        "",
        code(command),
        "",
        f"Model {s['model']['label']} ({s['model']['blocks']} blocks). Bypassed blocks: "
        f"{', '.join(map(str, byp['layers']))} ({byp['how']}). Flagging detector: "
        f"{det['source']} layer {det['layer']}, {det['feature']} {det['classifier']} "
        f"({det['chosen']}), threshold {det['threshold']:.4g}. "
        f"{gen['decoding'].capitalize()} decoding, at most {gen['max_new_tokens']} new tokens, "
        f"chat template {'on' if gen['chat_template'] else 'off'}. "
        f"Rates with Wilson {int(100 * s['level'])}% CIs.",
        "",
    ]
    for name, info in s["sets"].items():
        removed = info["removed_detector_training"]
        lines.append(
            f"- {code(name)} ({info['label']}, {code(info['source'])}): {info['n']} prompts"
            + (
                f", a seeded sample after leaving out {removed} used to train the detector"
                if removed
                else ""
            )
        )
    return lines


def _judges(s: dict) -> list[str]:
    lines = ["", "## Detector", "", "| set | measure | flagged |", "|---|---|---|"]
    lines += [f"| {n} | {r['measure']} | {_pct(r)} |" for n, r in s["detector_rates"].items()]
    lines += ["", "## Judges", ""]
    for name, info in s["judges"].items():
        extra = {k: v for k, v in info.items() if k != "definition"}
        lines.append(f"- **{name}**: " + "; ".join(info["definition"]) + f". Settings: `{extra}`")
    if s["combine"]:
        lines.append(
            f"- **complied** (the headline): refused when the refusal judge fires, complied when "
            f"every one of {', '.join(s['combine'])} says answered, else other; "
            "blocked = not complied, kept = complied."
        )
    return lines


def _rates(s: dict) -> list[str]:
    lines = ["", "## Blocked (jailbreak sets) and kept (benign sets), by mode and judge", ""]
    judges = list(dict.fromkeys(r["judge"] for r in s["rates"] if r["judge"]))
    lines += [
        "| set | measure | mode | " + " | ".join(judges) + " | identical to baseline |",
        "|---|---|---|" + "---|" * (len(judges) + 1),
    ]
    for name in s["sets"]:
        for mode in s["modes"]:
            mine = {r["judge"]: r for r in s["rates"] if r["set"] == name and r["mode"] == mode}
            lines.append(
                f"| {name} | {mine[judges[0]]['measure'] if judges else ''} | {mode} | "
                + " | ".join(_pct(mine[j]) for j in judges)
                + f" | {_pct(mine[None])} |"
            )
    return lines + _judge_error(s)


def _judge_error(s: dict) -> list[str]:
    """Each rate beside the judge's validated error and corrected for it (Rogan–Gladen)."""
    from jbtrace.views.outcomes_md import corrected_cell, judge_error_cell

    error = s.get("judge_error")
    if not isinstance(error, dict):
        return ["", f"Judge error: {error or 'not given'}."]
    lines = [
        "",
        f"## Rates corrected for the judges' error (validated: `{error['source']}`)",
        "",
        "| set | measure | mode | judge | rate | judge sensitivity / specificity | corrected |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["rates"]:
        if r["judge"] and r.get("judge_error"):
            lines.append(
                f"| {r['set']} | {r['measure']} | {r['mode']} | {r['judge']} | {_pct(r)} "
                f"| {judge_error_cell(r)} | {corrected_cell(r.get('corrected'))} |"
            )
    return lines


def _samples(s: dict, rows: list[dict]) -> list[str]:
    lines = ["", "## Samples (prompt, baseline, guarded)", ""]
    shown = "guard" if "guard" in s["modes"] else s["modes"][0]
    for name in s["sets"]:
        mine = [r for r in rows if r["mode"] == shown and r["set"] == name]
        picked = ([r for r in mine if r["bypassed"]] + [r for r in mine if not r["bypassed"]])[
            : s.get("samples", 3)
        ]
        if not picked:
            continue
        lines += [
            f"### {name} ({shown} mode)",
            "",
            "| prompt | flagged (score) | baseline | guarded | verdicts (baseline → guarded) |",
            "|---|---|---|---|---|",
        ]
        for r in picked:
            verdicts = ", ".join(
                f"{j}: {'answered' if r['baseline_verdicts'][j]['answered'] else 'not'} → "
                f"{'answered' if v['answered'] else 'not'}"
                for j, v in r["verdicts"].items()
            )
            lines.append(
                f"| {_cell(r['text'])} | {r['flagged']} ({r['score']:.3g}) "
                f"| {_cell(r['baseline'])} | {_cell(r['response'])} | {verdicts} |"
            )
        lines.append("")
    return lines


def guard_markdown(result, command: str) -> str:
    """guard.md of a ``GuardResult``: settings, detector rates, judges, rates and samples."""
    s = result.summary
    lines = _header(s, command) + _judges(s) + _rates(s) + _samples(s, result.rows)
    lines.append(f"Took {s.get('seconds', 0):.0f} s.")
    return "\n".join(lines)
