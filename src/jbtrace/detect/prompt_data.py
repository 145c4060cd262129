"""The training and test prompts of ``detect``: labels, lengths, near-duplicate clusters, length
matching and the test sets (``--test-split``, ``--test-prompts``, evaluation-only sets)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.stats import ks_2samp
from sklearn.model_selection import StratifiedGroupKFold

from jbtrace.detect import features as F
from jbtrace.detect.holdout import test_set_prompts
from jbtrace.errors import UserError
from jbtrace.prompts import PromptSet, matching, neardup
from jbtrace.prompts.catalog import EVALUATION_ONLY

LABELS = {"benign": 0, "jailbreak": 1}


def resolve_labels(names: list[str], explicit: dict[str, str], training: bool) -> dict[str, int]:
    """0 (benign) or 1 (jailbreak) per set: --label, else the name's prefix, else (two) order."""
    bad = [v for v in explicit.values() if v not in LABELS]
    if bad:
        raise UserError(f"--label value {bad[0]!r}: use NAME=benign or NAME=jailbreak")
    out = {}
    for name in names:
        lowered = name.lower()
        if name in explicit:
            out[name] = LABELS[explicit[name]]
        elif lowered.startswith(("benign", "harmless")):
            out[name] = 0
        elif lowered.startswith(("jailbreak", "jb", "attack")):
            out[name] = 1
    missing = [n for n in names if n not in out]
    if missing and training and len(names) == 2 and not out:
        return {names[0]: 0, names[1]: 1}
    if missing:
        raise UserError(
            f"cannot tell whether prompt set {missing[0]!r} is benign or jailbreak: "
            f"name it benign*/jailbreak* or pass --label {missing[0]}=benign|jailbreak"
        )
    if training and set(out.values()) != {0, 1}:
        raise UserError("training needs at least one benign and one jailbreak prompt set")
    return out


def length_summary(lengths: np.ndarray, y: np.ndarray) -> dict:
    """Median and quartiles of token counts per class, and a two-sample KS test between them."""
    out = {
        name: {
            "n": int((y == c).sum()),
            "median": float(np.median(lengths[y == c])),
            "q25": float(np.percentile(lengths[y == c], 25)),
            "q75": float(np.percentile(lengths[y == c], 75)),
        }
        for name, c in LABELS.items()
    }
    ks = ks_2samp(lengths[y == 0], lengths[y == 1])
    out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    return out


def prompt_sources(sets: list[PromptSet]) -> np.ndarray:
    """Source of each prompt: the set's name, or NAME/GROUP for a set whose prompts carry groups."""
    return np.array(
        [f"{s.name}/{g}" if s.groups else s.name for s in sets for g in s.group_labels()]
    )


def _check_counts(y: np.ndarray, folds: int, what: str) -> None:
    least = min(int((y == 0).sum()), int((y == 1).sum()))
    if least < folds:
        raise UserError(f"{what}: {least} prompts in the smaller class, fewer than --folds {folds}")


def _near_duplicate_summary(clusters: np.ndarray, threshold: float) -> dict:
    sizes = np.bincount(np.unique(clusters, return_inverse=True)[1])
    return {
        "threshold": threshold,
        "ngram": neardup.NGRAM,
        "clusters": int(len(sizes)),
        "prompts_in_shared_clusters": int(sizes[sizes > 1].sum()),
    }


@dataclass
class Prompts:
    """The loaded training prompts, which of them train, and the test prompts to score."""

    texts: list[str]  # every training prompt loaded
    y: np.ndarray  # label per loaded prompt
    sources: np.ndarray  # source per loaded prompt
    full: np.ndarray  # full token count per loaded prompt
    clusters: np.ndarray  # near-duplicate cluster per loaded prompt
    test_clusters: np.ndarray  # near-duplicate cluster per test-set prompt (same numbering)
    keep: np.ndarray  # the loaded prompts that train (after length matching and --test-split)
    test_texts: dict[str, list[str]] = field(default_factory=dict)
    test_y: dict[str, int] = field(default_factory=dict)


def training_prompts(lm, train_sets, test_sets, train_labels, options) -> tuple[Prompts, dict]:
    """Labels, lengths, near-duplicate clusters and length matching of the training prompts."""
    texts = [t for s in train_sets for t in s.texts]
    y_all = np.concatenate([np.full(len(s), train_labels[s.name]) for s in train_sets])
    sources = prompt_sources(train_sets)
    full = F.tokenize(lm, texts, options.max_tokens, options.chat_template).full_lengths
    # one clustering over training and test prompts: equal ids mean near-duplicates across sets
    clusters = neardup.clusters(
        texts + [t for s in test_sets for t in s.texts], options.near_duplicate
    )
    train_clusters = clusters[: len(texts)]
    keep = (
        matching.match_lengths(full, y_all == 1, options.seed)
        if options.match_length
        else np.arange(len(texts))
    )
    _check_counts(
        y_all[keep],
        options.folds,
        "length-matched training set" if options.match_length else "training set",
    )
    data = {
        "train_sets": {
            s.name: {
                "label": "jailbreak" if train_labels[s.name] else "benign",
                "n": len(s),
                "source": s.source,
                "sources": sorted(set(prompt_sources([s]))),
            }
            for s in train_sets
        },
        "length_matching": matching.PROCEDURE if options.match_length else None,
        "near_duplicates": _near_duplicate_summary(train_clusters[keep], options.near_duplicate),
        "lengths_loaded": length_summary(full, y_all),
        "lengths_used": length_summary(full[keep], y_all[keep]),
    }
    prompts = Prompts(texts, y_all, sources, full, train_clusters, clusters[len(texts) :], keep)
    return prompts, data


def add_tests(lm, p: Prompts, test_sets, test_labels, options, data: dict) -> None:
    """The --test-split hold-out (taken from ``p.keep``) and the test sets, into ``p``."""
    if options.test_split:
        cv = StratifiedGroupKFold(
            max(2, round(1 / options.test_split)), shuffle=True, random_state=options.seed
        )
        part, hold = next(cv.split(p.keep, p.y[p.keep], p.clusters[p.keep]))
        p.keep, hold = p.keep[part], p.keep[hold]
        _check_counts(p.y[p.keep], options.folds, "training set after --test-split")
        for name, c in LABELS.items():
            p.test_texts[f"split_{name}"] = [p.texts[i] for i in hold if p.y[i] == c]
            p.test_y[f"split_{name}"] = c
    offset = 0
    for s in test_sets:
        # an evaluation-only benchmark is scored as it is: no length filter of the -t sets
        evaluation_only = s.info.get("role") == EVALUATION_ONLY
        fresh, info = test_set_prompts(
            lm,
            s,
            p.test_clusters[offset : offset + len(s)],
            set(p.texts),
            p.clusters,
            replace(options, test_min_tokens=0) if evaluation_only else options,
        )
        offset += len(s)
        data.setdefault("test_sets", {})[s.name] = {
            "label": "jailbreak" if test_labels[s.name] else "benign",
            "evaluation_only": evaluation_only,
            **info,
        }
        p.test_texts[s.name], p.test_y[s.name] = fresh, test_labels[s.name]
