"""Saved per-layer detectors: one writer and one reader (JSON config + safetensors, no pickle),
and scoring.

A saved detector holds, for each (source, layer, feature), the CP position and hidden factors
(for ``cp`` features), the standardiser's mean and scale, the linear classifier's weights and
intercept, the threshold on the margin at the target false-positive rate (set on held-out
benign scores), and the sigmoid, fitted on held-out margins, that turns margins into calibrated
probabilities. Only linear classifiers (logreg, linsvm) are saved: they are exactly a few arrays.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from jbtrace import publish
from jbtrace.detect import features as F
from jbtrace.detect import validate
from jbtrace.detect.decompose import CPFeatures
from jbtrace.errors import UserError
from jbtrace.models import LoadedModel
from jbtrace.prompts import PromptSet

FORMAT = "jbtrace-detector"
VERSION = 2  # 2: thresholds on the margin for every classifier, calibrated probabilities
SAVEABLE = ("logreg", "linsvm")
CONFIG, TENSORS = "detector.json", "detector.safetensors"


@dataclass
class Linear:
    """One layer's detector as arrays: CP projection (optional) → standardise → linear score."""

    source: str
    layer: int
    feature: str
    kind: str
    classifier: str
    threshold: float  # on the margin
    platt: tuple[float, float] | None  # probability = sigmoid(a·margin + b); None: sigmoid(margin)
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    position_factors: np.ndarray | None = None
    hidden_factors: np.ndarray | None = None
    cv: dict | None = (
        None  # cross-validated f1, f1_std, auroc of this detector (None in older files)
    )

    @property
    def key(self) -> str:
        return f"{self.source}.{self.layer}.{self.feature}"

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.kind != "cp":
            return X
        cp = CPFeatures(rank=self.position_factors.shape[1])
        cp.position_factors_, cp.hidden_factors_, cp.projection_ = (
            self.position_factors,
            self.hidden_factors,
            None,
        )
        return cp.transform(X)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """Linear score in the same operations as StandardScaler + decision_function."""
        Z = np.array(self.transform(X), copy=True)
        Z -= self.mean
        Z /= self.scale
        return Z @ self.coef + self.intercept[0]

    def score(self, X: np.ndarray) -> np.ndarray:
        """The margin (what the threshold applies to)."""
        return self.margin(X)

    def probability(self, X: np.ndarray) -> np.ndarray:
        s = self.score(X)
        return _sigmoid(s) if self.platt is None else _sigmoid(self.platt[0] * s + self.platt[1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def text_hash(text: str) -> str:
    """Short sha256 of one prompt: saved detectors list their training prompts this way."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def from_fitted(source: str, layer: int, fitted, cv: dict | None = None) -> Linear:
    """Arrays of a fitted ``detect.Fitted`` (logreg or linsvm)."""
    if fitted.classifier not in SAVEABLE:
        raise UserError(
            f"only linear detectors can be saved ({', '.join(SAVEABLE)}), not {fitted.classifier}"
        )
    scaler, clf = fitted.pipeline[0], fitted.pipeline[-1]
    cp = fitted.cp
    return Linear(
        source,
        layer,
        fitted.feature,
        fitted.kind,
        fitted.classifier,
        fitted.threshold,
        fitted.platt,
        scaler.mean_.copy(),
        scaler.scale_.copy(),
        clf.coef_[0].copy(),
        np.asarray(clf.intercept_, float).copy(),
        None if cp is None else cp.position_factors_.copy(),
        None if cp is None else cp.hidden_factors_.copy(),
        cv,
    )


@dataclass
class Detector:
    """A model's saved per-layer detectors and what is needed to recompute their features."""

    config: dict  # model spec / name / seed / dtype, max_tokens, cp_positions, training summary
    layers: list[Linear]
    projection: np.ndarray | None = None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the detector as the folder ``path``, published by rename: a kill leaves the
        previous detector or the new one, never new tensors beside old thresholds. An existing
        detector is replaced only with ``overwrite``; any other file or folder, never."""
        path = Path(path)
        check_target(path, overwrite)
        tensors, entries = _tensors(self.layers, self.projection)
        config = {"format": FORMAT, "version": VERSION, **self.config, "detectors": entries}
        tmp = publish.staging_folder(path.parent, path.name)
        try:
            save_file(tensors, str(tmp / TENSORS))
            publish.ordinary(tmp / TENSORS)
            publish.reached("detector-tensors")
            (tmp / CONFIG).write_text(json.dumps(config, indent=1, allow_nan=False))
            publish.swap_in(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Read a saved detector; anything that is not one, or is damaged, is one line."""
        path = publish.readable(Path(path))
        if not (path / CONFIG).is_file() or not (path / TENSORS).is_file():
            raise UserError(f"{path}: not a saved detector (needs {CONFIG} and {TENSORS})")
        try:
            config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            raise UserError(f"{path / CONFIG}: not JSON ({str(error).splitlines()[0]})") from None
        try:
            tensors = load_file(str(path / TENSORS))
        except Exception as error:  # safetensors raises its own error for a file of another kind
            raise UserError(
                f"{path / TENSORS}: not a safetensors file (jbtrace never reads pickles here): "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        config, layers = validate.detector_config(config, tensors, path, FORMAT, VERSION)
        return cls(config, [Linear(**e) for e in layers], tensors.get("projection"))

    def recommended(self) -> Linear:
        """The detector ``detect`` chose (best on its selection score), else the best
        cross-validated F1 (ties: AUROC, then the earlier layer)."""
        chosen = [d for d in self.layers if d.key == self.config.get("chosen", {}).get("key")]
        if chosen:
            return chosen[0]
        scored = [d for d in self.layers if d.cv]
        if not scored:
            raise UserError(
                "this detector was saved without cross-validation results; name the layer to use"
            )
        return max(scored, key=lambda d: (d.cv["f1"], d.cv["auroc"], -d.layer))

    def only(self, detectors: list[Linear]) -> Detector:
        """The same detector restricted to some of its layer detectors (scoring captures only their
        layers)."""
        return Detector(self.config, list(detectors), self.projection)

    def check_fits(self, lm: LoadedModel) -> None:
        """Refuse a model whose layers or hidden size are not the ones the detector reads."""
        hidden, info = F.hidden_size(lm), self.config.get("model", {})
        fitted = (info.get("model_type"), info.get("n_layers"))
        here = (getattr(lm.model.config, "model_type", None), lm.n_layers)
        if fitted[0] is not None and fitted != here:
            raise UserError(
                f"the detector was fitted on {info.get('spec')} ({fitted[0]}, {fitted[1]} layers), "
                f"not on a model like {lm.spec} ({here[0]}, {here[1]} layers)"
            )
        for d in self.layers:
            if d.layer >= lm.n_layers:
                raise UserError(
                    f"detector {d.key}: {lm.name} has no layer {d.layer} "
                    f"(layers 0-{lm.n_layers - 1}); it was fitted on another model"
                )
            if d.kind != "cp":
                width = d.mean.shape[0]
            else:
                width = (d.hidden_factors if self.projection is None else self.projection).shape[0]
            if width != hidden:
                raise UserError(
                    f"detector {d.key} reads states of width {width}, but {lm.name}'s are "
                    f"{hidden} wide: it was fitted on another model"
                )

    def score(
        self,
        lm: LoadedModel,
        prompt_sets: list[PromptSet],
        progress: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Per prompt and layer detector: jailbreak probability, native score and flag."""
        self.check_fits(lm)
        texts = [t for s in prompt_sets for t in s.texts]
        enc = F.tokenize(
            lm, texts, self.config["max_tokens"], self.config.get("chat_template", False)
        )
        requests = list(dict.fromkeys((d.source, d.layer) for d in self.layers))
        kinds = tuple(dict.fromkeys(d.kind for d in self.layers))
        captured = F.capture(
            lm,
            enc,
            requests,
            kinds,
            self.config["cp_positions"],
            self.projection,
            self.config.get("batch_size", 8),
            progress=progress,
        )
        where = [(s.name, i) for s in prompt_sets for i in range(len(s))]
        rows = []
        for d in self.layers:
            X = captured[(d.source, d.layer)][d.kind]
            score, prob = d.score(X), d.probability(X)
            rows += [
                {
                    "set": name,
                    "prompt": i,
                    "tokens": int(enc.lengths[k]),
                    "source": d.source,
                    "layer": d.layer,
                    "feature": d.feature,
                    "classifier": d.classifier,
                    "probability": float(prob[k]),
                    "score": float(score[k]),
                    "flag": bool(score[k] >= d.threshold),
                }
                for k, (name, i) in enumerate(where)
            ]
        return rows


def from_report(
    report, options, classifier: str, model_config: dict, every_layer: bool = False, train_texts=()
) -> Detector:
    """The ``classifier`` detector ranked first by ``ranking.ranked`` (or, ``every_layer``, all of
    them, the chosen first).

    Needs a report made with keep_fitted. The chosen one is the best on the protocol's selection
    score (the worst held-out source under cross-source), recorded in the config. Each layer
    detector keeps its cross-validated F1 and AUROC; ``train_texts`` (the loaded training prompts)
    are saved as short hashes so that evaluations can leave them out.
    """
    from jbtrace.detect import nested
    from jbtrace.detect.ranking import ranked

    if classifier not in SAVEABLE:
        raise UserError(
            f"--save-classifier {classifier!r}: only {', '.join(SAVEABLE)} can be saved as arrays"
        )
    rows = {
        (r["source"], r["layer"], r["feature"], r["classifier"]): r
        for r in ranked(report.rows)
        if r["classifier"] == classifier
    }
    order = list(rows)
    keys = order if every_layer else order[:1]
    layers = [
        from_fitted(
            key[0], key[1], report.fitted[key], {k: rows[key][k] for k in ("f1", "f1_std", "auroc")}
        )
        for key in keys
    ]
    chosen = rows[order[0]]
    config = {
        "model": model_config,
        "max_tokens": options.max_tokens,
        "chat_template": options.chat_template,
        "cp_positions": options.cp_positions,
        "project_dim": options.project_dim,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "target_fpr": options.target_fpr,
        "protocol": options.protocol,
        "chosen": {
            "key": layers[0].key,
            "selection": chosen["selection"],  # inner: the winner's score in its own contest
            "worst_held_out": chosen["worst_held_out"],
            "outer": nested.outer([r for r in report.rows if r["classifier"] == classifier]),
            "tpr_at_fpr": chosen["tpr_at_fpr"],
        },
        "training": report.data,
        "train_text_hashes": sorted({text_hash(t) for t in train_texts}),
    }
    return Detector(config, layers, report.projection)


ARRAYS = ("mean", "scale", "coef", "intercept", "position_factors", "hidden_factors")


def _tensors(layers: list[Linear], projection) -> tuple[dict, list[dict]]:
    """The tensors of a detector's file and the entries of its config."""
    tensors, entries = {}, []
    for d in layers:
        entries.append(
            {
                "key": d.key,
                "source": d.source,
                "layer": d.layer,
                "feature": d.feature,
                "kind": d.kind,
                "classifier": d.classifier,
                "threshold": d.threshold,
                "platt": list(d.platt) if d.platt else None,
                "cv": d.cv,
            }
        )
        for name in ARRAYS:
            value = getattr(d, name)
            if value is not None:
                tensors[f"{d.key}/{name}"] = np.ascontiguousarray(value)
    if projection is not None:
        tensors["projection"] = np.ascontiguousarray(projection)
    return tensors, entries


def is_detector(path: Path) -> bool:
    """Whether the folder ``path`` holds only a saved detector's files (or nothing)."""
    names = {p.name for p in path.iterdir()}
    if not names <= {CONFIG, TENSORS}:
        return False
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8")) if names else {}
    except (ValueError, OSError):
        return False
    return not names or (isinstance(config, dict) and config.get("format") == FORMAT)


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to save a detector over a file, into a folder that holds anything else, or over a
    saved detector without ``overwrite`` (one line each)."""
    publish.check_folder(path, "--save")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_detector(path):
        raise UserError(
            f"--save {path}: that folder holds other files than a detector; "
            "not writing there (choose another --save folder)"
        )
    if not overwrite:
        raise UserError(
            f"--save {path}: a saved detector is already there; "
            "give --overwrite to replace it, or another --save folder"
        )


def write_scores(rows: list[dict], path: str | Path) -> Path:
    """CSV (one row per prompt and detector) or, for a .json path, a JSON list."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(rows, indent=1))
    else:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    tmp.replace(path)
    return path
