"""Runs that cannot mix: which command owns a run directory, and which stores may be combined.

One rule for every command that writes a run: the same command on the same ``-o``
resumes its checkpoint; a finished run, a run of another command, prompt set or model,
or a folder with other files is refused in one line unless ``--overwrite``, which removes
the files jbtrace wrote there (store, figures, comparisons, checkpoints) before anything is
written. A folder is a run only if it holds a marker no other program writes: a ``run.json``
signed by jbtrace (``SIGNATURE``), a result JSON whose command is a jbtrace command line, or
a checkpoint; any other folder is never removed.
``check_mergeable`` and ``check_same_inputs`` refuse shards and attention maps whose
provenance differs from the run they would join.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from jbtrace import __version__, publish
from jbtrace.errors import UserError
from jbtrace.trace.checkpoint import DIR, Checkpoint

# Files a finished command leaves (the rest of a run is derived from them).
FINISHED = ("trace.zarr", "trace.zarr.old", "run.json", "detect.json")
# The signature run.json carries (key "jbtrace"): the marker that a folder is a jbtrace run.
SIGNATURE = {"kind": "run", "version": __version__}
# Result files whose "command" is the jbtrace command line that wrote them (also markers).
RESULTS = ("detect.json", "guard.json", "outcomes.json")
# What jbtrace writes into a run (names or patterns): all that --overwrite removes.
OWN = (
    *FINISHED,
    DIR,
    *RESULTS,
    "compare.json",
    "summary.md",
    "report.html",
    "prompts.jsonl",
    "detect.md",
    "guard.md",
    "guard.jsonl",
    "outcomes.md",
    "outcomes.jsonl",
    "*.png",
    "*.pdf",
    "*.svg",
    *publish.own_names(),
    ".removed-*",
)


def fingerprint(command: str, models: list[dict], prompt_sets, **options) -> dict:
    """What must be equal for a rerun to continue a checkpoint.

    That is the models, the prompt sets (by sha256) and the options.
    """
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
    """Claim ``run_dir`` for ``command``: resume, refuse a mix, or clear it on ``overwrite``.

    The same command resumes its own checkpoint. A publish a kill interrupted is finished
    (its files were complete) or, if its files were still being written, removed.

    ``inputs_of`` names a finished command whose run this command adds to (attention
    maps into an extract's run): such a run is not refused here; its provenance is
    checked against the new result when that is written.
    """
    run_dir = Path(run_dir)
    publish.check_folder(run_dir)
    checkpoint = Checkpoint(run_dir, command, fingerprint)
    if run_dir.is_dir():  # finish a publish a kill interrupted; drop unfinished ones
        publish.recover(run_dir)
        publish.remove_staging(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return checkpoint
    if overwrite:
        remove(run_dir)
        return checkpoint
    hint = (
        "give --overwrite to replace it (its figures, comparisons and checkpoints go too), "
        "or another --out"
    )
    saved = checkpoint.saved_fingerprint()
    if saved is not None:
        if saved != fingerprint:
            raise UserError(
                f"{run_dir} holds a partial run of a different {command} (differs in: "
                f"{', '.join(differences(saved, fingerprint))}): "
                f"rerun that command to resume it, or {hint}"
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
            f"{run_dir} is not empty "
            f"({', '.join(others[:3])}{', …' if len(others) > 3 else ''}): {hint}"
        )
    return checkpoint  # only other commands' checkpoints, without saved states


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a marker only jbtrace writes.

    That is a signed run.json, a result written by a jbtrace command, or a checkpoint.
    """
    if (run_dir / DIR).is_dir():
        return True
    signed = _json_file(run_dir / "run.json").get("jbtrace")
    if isinstance(signed, dict) and signed.get("kind") == SIGNATURE["kind"]:
        return True
    return any(
        str(_json_file(run_dir / name).get("command", "")).startswith("jbtrace ")
        for name in RESULTS
    )


def remove(run_dir: Path) -> None:
    """Remove the files jbtrace wrote into a run directory; refuse a folder that is not a run."""
    if not is_run(run_dir):
        raise UserError(
            f"{run_dir} is not a jbtrace run (no signed run.json, result or checkpoint): "
            "not removing anything; choose another --out"
        )
    own = [p for p in run_dir.iterdir() if any(fnmatch.fnmatch(p.name, n) for n in OWN)]
    # inside the run (its parent may be unwritable, or '.'), so the files go by rename
    trash = Path(tempfile.mkdtemp(prefix=".removed-", dir=run_dir))
    for path in own:  # the run's files disappear at once; they are deleted after
        path.rename(trash / path.name)
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
    """Refuse shards that are not one split of one run.

    One split: the same inputs, each shard index once, each prompt once.
    """
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
            "cannot merge: the runs were split in different ways "
            f"({', '.join(f'{k}/{m}' for k, m in shards)})"
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
            f"cannot merge: {len(twice)} prompts appear in more than one run "
            f"(e.g. {scenario} #{index})"
        )


def check_same_inputs(run_prov: dict, new_prov: dict, where: str) -> None:
    """Refuse results (``new_prov``) from prompt sets or same-named models other than the run's."""
    theirs, ours = {p[0]: p for p in _sets(run_prov)}, _sets(new_prov)
    changed = [p[0] for p in ours if p[0] in theirs and theirs[p[0]][2:] != p[2:]]
    if changed:
        raise UserError(
            f"prompt set {', '.join(changed)} differs from the one in {where} "
            "(other prompts: sha256, size): "
            "use the run's prompt sets, --overwrite, or another --out"
        )
    run_models, new_models = _models(run_prov), _models(new_prov)
    clash = [
        name for name, info in new_models.items() if name in run_models and run_models[name] != info
    ]
    if clash:
        raise UserError(
            f"model {', '.join(clash)} is not the model of that name in {where} "
            "(source, revision, dtype or seed differ): "
            "label it with --model-name, --overwrite, or another --out"
        )
