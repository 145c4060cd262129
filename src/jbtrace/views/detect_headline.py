"""The headline of one model's detect results, in sentences: the recommended detector's outer
numbers, the best text baseline's, the margin between them with its interval, and the FPR on the
evaluation-only benign sets. Shared by detect.md, the HTML report and the results page."""

from __future__ import annotations


def _rate(e: dict | None) -> str:
    if not e or e.get("rate") is None:
        return "n/a"
    ci = f" [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e.get("ci_low") is not None else ""
    return f"{e['rate']:.3f}{ci} ({e['k']}/{e['n']})"


def _worst(w: dict | None) -> str:
    return f" (worst split {w['split']}: {w['rate']:.3f})" if w else ""


def _outer(c: dict) -> str:
    o = c["outer"]
    if not o:
        return "no outer splits (nothing was held out)"
    return (
        f"TPR {_rate(o['tpr'])}{_worst(o['worst_tpr'])}; "
        f"FPR {_rate(o['fpr'])}{_worst(o['worst_fpr'])}"
    )


def _eval(c: dict) -> str:
    if not c.get("eval_fpr"):
        return ""
    parts = ", ".join(f"{n} {e['rate']:.3f}" for n, e in c["eval_fpr"].items())
    w = c["worst_eval"]
    return f" FPR on the evaluation-only benign sets: {parts}; worst {w['set']} {w['rate']:.3f}."


def verdict(margin: dict | None) -> str:
    """Whether the trace detector beats the best text baseline, from the margin's interval."""
    if margin is None:
        return "cannot be compared"
    if margin["ci_low"] > 0:
        return "beats the best text baseline"
    if margin["ci_high"] < 0:
        return "is worse than the best text baseline"
    return "does not beat the best text baseline (the interval includes 0)"


def headline(rep: dict) -> list[str]:
    """Sentences for one model's report dict (``detect.ranking.to_dict``)."""
    c, b, m = rep.get("chosen"), rep.get("best_baseline"), rep.get("margin")
    if not c:
        return []
    lines = [
        f"Recommended detector: {c['candidate']}. Outer estimate (selection re-run without each "
        f"outer split, then scored on it): {_outer(c)}. Its inner selection score "
        f"{c['inner_selection']:.3f} is the winner of its own contest, so optimistic." + _eval(c)
    ]
    if b:
        lines.append(f"Best text baseline: {b['candidate']}: {_outer(b)}." + _eval(b))
    if m:
        lines.append(
            f"Margin in outer TPR over the best text baseline: {m['diff']:+.3f} "
            f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] ({m['method']} 95% interval): the trace "
            f"detector {verdict(m)}. Both are at thresholds set for the target FPR; the outer "
            f"FPR they reach is {_rate(c['outer']['fpr'])} for the detector and "
            f"{_rate(b['outer']['fpr'])} for the baseline."
        )
    return lines
