"""Runs that cannot mix: which command owns a run directory, and which stores may be combined.

One rule for every command that writes a run: the same command on the same ``-o``
resumes its checkpoint; a finished run, a run of another command, prompt set or model,
or a folder with other files is refused in one line unless ``--overwrite``, which removes
the whole run (store, figures, comparisons, checkpoints) before anything is written.
``check_mergeable`` and ``check_same_inputs`` refuse shards and attention maps whose
provenance differs from the run they would join.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from jbtrace.errors import UserError
from jbtrace.trace.checkpoint import DIR, Checkpoint

# Files a finished command leaves (the rest of a run is derived from them).
FINISHED = ("trace.zarr", "trace.zarr.old", "run.json", "detect.json")
# Names only jbtrace writes into a run: a folder holding any of them is a run that --overwrite may remove.
MARKERS = (*FINISHED, DIR, "compare.json", "summary.md", "report.html", "prompts.jsonl")


def fingerprint(command: str, models: list[dict], prompt_sets, **options) -> dict:
    """What must be equal for a rerun to continue a checkpoint: models, prompt sets (by sha256) and options."""
    return {
        "command": command,
        "models": models,
        "prompt_sets": [
            {"name": p.name, "source": p.source, "sha256": p.sha256, "size": len(p)}
            for p in prompt_sets
        ],
        "options": json.loads(json.dumps(options, default=list)),
    }


def differences(a: dict, b: dict) -> list[str]:
    """Top-level keys (and prompt set names) in which two fingerprints differ."""
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    out = []
    for key in keys:
        if key == "prompt_sets":
            sets_a, sets_b = ({p["name"]: p for p in x.get(key, [])} for x in (a, b))
            changed = [
                n for n in sorted(sets_a.keys() | sets_b.keys()) if sets_a.get(n) != sets_b.get(n)
            ]
            out.append("prompt set " + ", ".join(changed) if changed else "prompt set order")
        elif key == "options":
            opts_a, opts_b = a.get(key, {}), b.get(key, {})
            out.extend(
                f"--{k.replace('_', '-')}"
                for k in sorted(opts_a.keys() | opts_b.keys())
                if opts_a.get(k) != opts_b.get(k)
            )
        else:
            out.append(key)
    return out


def prepare(
    run_dir: str | Path,
    command: str,
    fingerprint: dict,
    overwrite: bool = False,
    inputs_of: str | None = None,
) -> Checkpoint:
    """Claim ``run_dir`` for ``command``: resume its own checkpoint, or refuse a mix, or clear it on ``overwrite``.

    ``inputs_of`` names a finished command whose run this command adds to (attention
    maps into an extract's run): such a run is not refused here; its provenance is
    checked against the new result when that is written.
    """
    run_dir = Path(run_dir)
    checkpoint = Checkpoint(run_dir, command, fingerprint)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return checkpoint
    if overwrite:
        remove(run_dir)
        return checkpoint
    hint = "give --overwrite to replace it (its figures, comparisons and checkpoints go too), or another --out"
    saved = checkpoint.saved_fingerprint()
    if saved is not None:
        if saved != fingerprint:
            raise UserError(
                f"{run_dir} holds a partial run of a different {command} (differs in: "
                f"{', '.join(differences(saved, fingerprint))}): rerun that command to resume it, or {hint}"
            )
        return checkpoint  # the same command: resume
    names = {p.name for p in run_dir.iterdir()}
    finished = [n for n in FINISHED if n in names]
    if finished and inputs_of:
        return checkpoint
    if finished:
        raise UserError(f"{run_dir} already holds a finished run ({', '.join(finished)}): {hint}")
    others = sorted(names - {DIR})
    if others:
        raise UserError(
            f"{run_dir} is not empty ({', '.join(others[:3])}{', …' if len(others) > 3 else ''}): {hint}"
        )
    return checkpoint  # only other commands' checkpoints, without saved states


def remove(run_dir: Path) -> None:
    """Remove a run directory's contents, refusing a folder that is not a jbtrace run."""
    names = {p.name for p in run_dir.iterdir()}
    if not names & set(MARKERS):
        raise UserError(
            f"{run_dir} is not a jbtrace run (no {', '.join(FINISHED[:3])}): not removing it; choose another --out"
        )
    trash = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-removed-", dir=run_dir.parent))
    run_dir.rename(trash / run_dir.name)  # the run disappears at once; its files are deleted after
    run_dir.mkdir()
    shutil.rmtree(trash)


# ------------------------------------------------------------------ provenance of stores

# Provenance keys that change the numbers: stores that differ in any of them cannot be merged.
SAME_FOR_MERGE = ("statistics", "align", "bins", "max_tokens", "chat_template", "seed", "limit")
MODEL_KEYS = ("source", "revision", "dtype", "seed")


def _sets(prov: dict) -> list[tuple]:
    return [
        (p.get("name"), p.get("source"), p.get("sha256"), p.get("size"))
        for p in prov.get("prompt_sets", [])
    ]


def _models(prov: dict) -> dict:
    return {
        name: tuple(info.get(k) for k in MODEL_KEYS)
        for name, info in prov.get("models", {}).items()
    }


def check_mergeable(provenances: list[dict], rows: list[list[tuple[str, int]]]) -> None:
    """Refuse shards that are not one split of one run: same inputs, each shard index once, each prompt once."""
    first = provenances[0]
    for i, prov in enumerate(provenances[1:], start=2):
        differ = [k for k in SAME_FOR_MERGE if prov.get(k) != first.get(k)]
        differ += ["prompt sets (sha256)"] if _sets(prov) != _sets(first) else []
        differ += (
            ["models (source, revision, dtype, seed)"] if _models(prov) != _models(first) else []
        )
        if differ:
            raise UserError(f"cannot merge: run {i} differs from run 1 in {', '.join(differ)}")
    shards = [tuple(p.get("shard", (0, 1))) for p in provenances]
    n = {s[1] for s in shards}
    if len(n) != 1:
        raise UserError(
            f"cannot merge: the runs were split in different ways ({', '.join(f'{k}/{m}' for k, m in shards)})"
        )
    n = n.pop()
    indices = Counter(k for k, _ in shards)
    repeated, missing = (
        sorted(k for k, c in indices.items() if c > 1),
        sorted(set(range(n)) - set(indices)),
    )
    if repeated or missing:
        raise UserError(
            f"cannot merge: shards of {n} must each be given once"
            + (f"; repeated: {', '.join(f'{k}/{n}' for k in repeated)}" if repeated else "")
            + (f"; missing: {', '.join(f'{k}/{n}' for k in missing)}" if missing else "")
        )
    seen = Counter(row for shard in rows for row in shard)
    twice = [row for row, c in seen.items() if c > 1]
    if twice:
        scenario, index = twice[0]
        raise UserError(
            f"cannot merge: {len(twice)} prompts appear in more than one run (e.g. {scenario} #{index})"
        )


def check_same_inputs(run_prov: dict, new_prov: dict, where: str) -> None:
    """Refuse results (``new_prov``) from other prompt sets, or other models under the same name, than the run's."""
    theirs, ours = {p[0]: p for p in _sets(run_prov)}, _sets(new_prov)
    changed = [p[0] for p in ours if p[0] in theirs and theirs[p[0]][2:] != p[2:]]
    if changed:
        raise UserError(
            f"prompt set {', '.join(changed)} differs from the one in {where} (other prompts: sha256, size): "
            f"use the run's prompt sets, --overwrite, or another --out"
        )
    run_models, new_models = _models(run_prov), _models(new_prov)
    clash = [
        name for name, info in new_models.items() if name in run_models and run_models[name] != info
    ]
    if clash:
        raise UserError(
            f"model {', '.join(clash)} is not the model of that name in {where} (source, revision, dtype "
            f"or seed differ): label it with --model-name, --overwrite, or another --out"
        )
