"""Nested selection: the number reported for the recommended detector comes from data that
neither fitting nor ranking saw.

``detect`` ranks candidates (layer × feature × classifier, or the text baselines) by an *inner*
score: the out-of-fold TPR at the target FPR. The winner's inner score is the winner of its own
contest, so it is optimistic. Around that selection sits an *outer* split (each held-out source
under ``cross-source``, else grouped folds): for each outer split the whole selection is re-run
on the rest (``evaluate._outer`` stores each candidate's inner score on the rest and its rates
on the split, at a threshold set on the rest), the winner on the rest is scored on the split,
and the splits' counts are pooled. That pooled number estimates what the selection *procedure*
delivers on unseen data; it is the one to report (``outer``), beside the winner's
``inner_selection`` (named so that it is not mistaken for it).
"""

from __future__ import annotations

from jbtrace import proportion

METHOD = "clopper-pearson"
MARGIN_METHOD = "newcomb"  # statsmodels' confint_proportions_2indep, a difference of two rates


def candidate(row: dict) -> str:
    """A readable name of one candidate row."""
    where = f"{row['source']} {row['layer']} " if row.get("source") else "text "
    return f"{where}{row['feature']} ({row['classifier']})"


def _splits(row: dict) -> dict:
    return row.get("held_out") or row.get("outer_folds") or {}


def _pooled(k: int, n: int) -> dict:
    low, high = proportion.interval(k, n, METHOD)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci_low": low, "ci_high": high}


def _winner(rows: list[dict], split: str) -> tuple[dict, dict] | None:
    """The candidate with the best inner score on the rest of ``split`` (then inner AUROC)."""
    scored = [
        (r, _splits(r)[split])
        for r in rows
        if split in _splits(r) and _splits(r)[split]["inner_selection"] is not None
    ]
    if not scored:
        return None
    return max(scored, key=lambda t: (t[1]["inner_selection"], t[1]["inner_auroc"]))


def outer(rows: list[dict]) -> dict | None:
    """The selection procedure scored on data it never saw: per outer split the winner on the
    rest and its rates on the split, then TPR and FPR pooled over the splits (Clopper–Pearson
    intervals over the pooled prompts). None when the rows carry no outer splits."""
    names = list(dict.fromkeys(s for r in rows for s in _splits(r)))
    if not names:
        return None
    per, counts = {}, {"jailbreak": [0, 0], "benign": [0, 0]}
    for split in names:
        won = _winner(rows, split)
        if won is None:
            continue
        row, entry = won
        per[split] = {
            "winner": candidate(row),
            "inner_selection": entry["inner_selection"],
            "near_copies_out_of_training": entry["near_copies_out_of_training"],
        }
        for side in counts:
            if side in entry and entry[side]["n"]:
                per[split][side] = _pooled(entry[side]["k"], entry[side]["n"])
                counts[side][0] += entry[side]["k"]
                counts[side][1] += entry[side]["n"]
    tpr, fpr = _pooled(*counts["jailbreak"]), _pooled(*counts["benign"])

    def worst(side: str, sign: int) -> dict | None:
        found = [(s, e[side]["rate"]) for s, e in per.items() if side in e]
        if not found:
            return None
        split, value = min(found, key=lambda t: sign * t[1])
        return {"split": split, "rate": value}

    return {
        "splits": per,
        "tpr": tpr,
        "fpr": fpr,
        "worst_tpr": worst("jailbreak", 1),
        "worst_fpr": worst("benign", -1),
    }


def margin(a: dict, b: dict) -> dict | None:
    """TPR of ``a`` minus TPR of ``b`` (pooled outer rates) with a Newcombe 95% interval; it
    treats the two as independent samples, which is conservative for the same prompts."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    if not a["n"] or not b["n"]:
        return None
    low, high = confint_proportions_2indep(
        a["k"], a["n"], b["k"], b["n"], method=MARGIN_METHOD, compare="diff"
    )
    diff = a["k"] / a["n"] - b["k"] / b["n"]
    return {"diff": diff, "ci_low": float(low), "ci_high": float(high), "method": MARGIN_METHOD}


def chosen(rows: list[dict], ranked_rows: list[dict]) -> dict | None:
    """The recommended candidate (first of ``ranked_rows``) with its optimistic inner number and
    the outer estimate of the procedure that chose it."""
    if not ranked_rows:
        return None
    top = ranked_rows[0]
    result = outer(rows)
    agree = (
        sum(e["winner"] == candidate(top) for e in result["splits"].values())
        / len(result["splits"])
        if result and result["splits"]
        else None
    )
    return {
        "candidate": candidate(top),
        "key": [top.get("source"), top.get("layer"), top["feature"], top["classifier"]],
        "inner_selection": top["selection"],
        "inner_selection_note": "optimistic: the winner's score in the contest that chose it",
        "outer": result,
        "outer_winner_agreement": agree,
        "tests": {k: v for k, v in top.get("tests", {}).items()},
    }
