"""outcomes.md: the attack success rate per set and the paired effects, as markdown."""

from __future__ import annotations


def _pct(x: float, ci: tuple[float, float]) -> str:
    return f"{100 * x:.0f}% ({100 * ci[0]:.0f}–{100 * ci[1]:.0f})"


def judge_error_cell(row: dict) -> str:
    """The verdict's validated sensitivity and specificity (a dash when not validated)."""
    e = row.get("judge_error")
    if not e or e.get("recall") is None or e.get("specificity") is None:
        return "not validated"
    return f"{e['recall']:.2f} / {e['specificity']:.2f} (on {e['validated_on']})"


def corrected_cell(fixed: dict | None) -> str:
    """A Rogan–Gladen corrected rate with its interval (a dash when there is none)."""
    if not fixed or fixed.get("rate") is None:
        return "–"
    return _pct(fixed["rate"], fixed["ci"])


def outcomes_markdown(rates: list[dict], paired: list[dict]) -> str:
    """The ASR table per set and the paired effects (``defend.attack_success`` rates and pairs)."""
    lines = [
        "| set | source | n | complied | refused | other | ASR (95% CI) | not refused (95% CI) "
        "| judge sensitivity / specificity | ASR corrected for the judge (95% CI) |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in rates:
        lines.append(
            f"| {r['set']} | {r['source']} | {r['n']} | {r['complied']} | {r['refused']} "
            f"| {r['other']} | {_pct(r['asr'], r['asr_ci'])} "
            f"| {_pct(r['not_refused'], r['not_refused_ci'])} | {judge_error_cell(r)} "
            f"| {corrected_cell(r.get('asr_corrected'))} |"
        )
    if paired:
        lines += [
            "",
            "Paired effect (complied = the one verdict; both sides from the same kept prompts):",
            "",
            "| direct | wrapped | pairs | complied directly | complied wrapped | "
            "wrapped only | direct only | McNemar exact p |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in paired:
            lines.append(
                f"| {p['direct']} | {p['wrapped']} | {p['pairs']} | {p['complied_direct']} | "
                f"{p['complied_wrapped']} | {p['complied_wrapped_only']} | "
                f"{p['complied_direct_only']} | {p['mcnemar_p']:.3g} |"
            )
    return "\n".join(lines) + "\n"
