"""What a saved detector's files must hold before anything is scored with them.

``detector_config`` checks ``detector.json`` and the tensors it names and turns each entry into
the keyword arguments of a ``detector.Linear``; whatever is wrong is one line naming the file and
the field, never a traceback or a detector that scores nonsense.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path

import numpy as np

from jbtrace.detect import features as F
from jbtrace.errors import UserError

CLASSIFIERS = ("logreg", "linsvm")
MODEL_KEYS = ("spec", "name", "dtype", "revision", "seed")
VECTORS = ("mean", "scale", "coef")


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _top(config, path: Path, fmt: str, version: int) -> None:
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise UserError(f"{path}: not a {fmt} file (detector.json is not its config)")
    if config.get("version") != version:
        raise UserError(f"{path}: a {fmt} of version {config.get('version')!r}, not {version}")
    model = config.get("model")
    if not isinstance(model, dict) or not all(k in model for k in MODEL_KEYS):
        raise UserError(f"{path}: detector.json's model needs {', '.join(MODEL_KEYS)}")
    if not isinstance(model["spec"], str):
        raise UserError(f"{path}: detector.json's model spec is not a string")
    for key in ("max_tokens", "cp_positions"):
        if not _count(config.get(key)):
            raise UserError(f"{path}: detector.json's {key} is not a positive whole number")
    entries = config.get("detectors")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: detector.json lists no detectors")


def _entry(e) -> str:
    """What is wrong with one entry of ``detectors`` ('' when nothing)."""
    if not isinstance(e, dict):
        return "is not an object"
    if e.get("source") not in F.SOURCES:
        return f"has source {e.get('source')!r} (not one of {', '.join(F.SOURCES)})"
    if not isinstance(e.get("layer"), int) or isinstance(e["layer"], bool) or e["layer"] < 0:
        return f"has layer {e.get('layer')!r} (not a layer index)"
    if e.get("kind") not in F.KINDS or not isinstance(e.get("feature"), str):
        return f"has kind {e.get('kind')!r} or feature {e.get('feature')!r} that jbtrace cannot use"
    if e.get("classifier") not in CLASSIFIERS:
        return f"has classifier {e.get('classifier')!r} (not one of {', '.join(CLASSIFIERS)})"
    if not _number(e.get("threshold")):
        return f"has threshold {e.get('threshold')!r} (not a finite number)"
    platt = e.get("platt")
    if platt is not None and not (
        isinstance(platt, list) and len(platt) == 2 and all(map(_number, platt))
    ):
        return f"has platt {platt!r} (not two finite numbers or null)"
    if e.get("cv") is not None and not isinstance(e["cv"], dict):
        return "has cv that is not an object"
    return ""


def _arrays(e: dict, tensors: dict) -> tuple[dict, str]:
    """One entry's arrays, and what is wrong with them ('' when nothing)."""
    key = f"{e['source']}.{e['layer']}.{e['feature']}"
    arrays = {n: tensors.get(f"{key}/{n}") for n in (*VECTORS, "intercept")}
    arrays |= {n: tensors.get(f"{key}/{n}") for n in ("position_factors", "hidden_factors")}
    missing = [n for n in (*VECTORS, "intercept") if arrays[n] is None]
    if e["kind"] == "cp":
        missing += [n for n in ("position_factors", "hidden_factors") if arrays[n] is None]
    if missing:
        return arrays, f"({key}) has no {', '.join(missing)} tensor in detector.safetensors"
    sizes = {arrays[n].shape for n in VECTORS}
    if len(sizes) != 1 or len(sizes.pop()) != 1 or arrays["intercept"].shape != (1,):
        return arrays, f"({key}) has mean, scale and coef that are not vectors of one length"
    if not all(np.isfinite(a).all() for a in arrays.values() if a is not None):
        return arrays, f"({key}) has a tensor with NaN or infinite values"
    return arrays, ""


def detector_config(
    config, tensors: dict, path: Path, fmt: str, version: int
) -> tuple[dict, list[dict]]:
    """The config without format, version and detectors, and each detector's ``Linear``
    keyword arguments; a one-line ``UserError`` for anything that is not a usable detector."""
    _top(config, path, fmt, version)
    layers = []
    for i, e in enumerate(config["detectors"]):
        wrong = _entry(e)
        arrays, wrong = ({}, wrong) if wrong else _arrays(e, tensors)
        if wrong:
            raise UserError(f"{path}: detector {i + 1} in detector.json {wrong}")
        platt = tuple(e["platt"]) if e.get("platt") else None
        fields = ("source", "layer", "feature", "kind", "classifier", "threshold")
        layers.append({**{k: e[k] for k in fields}, "platt": platt, **arrays, "cv": e.get("cv")})
    rest = {k: v for k, v in config.items() if k not in ("format", "version", "detectors")}
    return rest, layers
