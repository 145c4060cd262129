"""Load a model from a spec (``tiny:ARCH``, ``builtin:NAME``, a directory or a hub id)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from jbtrace.errors import UserError
from jbtrace.models import builtin
from jbtrace.models.surgery import attention_modules, layer_map_text, max_positions, num_blocks

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class LoadedModel:
    """A model ready for extraction, with the facts the store records about it."""

    name: str
    spec: str
    model: nn.Module
    tokenizer: object
    n_layers: int  # number of layer indices, embedding output included (blocks + 1)
    has_attention: bool
    is_causal: bool
    random_init: bool
    max_positions: int | None
    layer_map: str
    provenance: dict = field(default_factory=dict)
    # e.g. "Q4_1 GGUF, de-quantized": shown wherever the model is named
    weights_note: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def label(self) -> str:
        """Name as shown in figures: random-init stand-ins and de-quantized weights say so."""
        note = "random-init stand-in" if self.random_init else self.weights_note
        return f"{self.name} ({note})" if note else self.name


def load_model(
    spec: str,
    *,
    name: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load ``tiny:ARCH``, ``builtin:NAME``, ``gguf:PATH`` (or ``FILE.gguf``), a local directory
    or a hub id."""
    dtype = _dtype(spec, dtype)
    got = _load_spec(
        spec, revision, allow_pickle, trust_remote_code, attn_implementation, device, seed
    )
    model = got.model.to(dtype=DTYPES[dtype])
    if not _is_dispatched(model):
        model = model.to(_resolve_device(device))
    model.eval()
    tok = got.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    has_attention = any(m is not None for m in attention_modules(model))
    is_causal = model.can_generate()  # causal LMs generate; encoders (MiniLM) do not
    n_blocks = num_blocks(model.config)
    label = name or (
        spec.split(":", 1)[1] if spec.startswith(("tiny:", "builtin:")) else _file_label(spec)
    )
    return LoadedModel(
        name=label,
        spec=spec,
        model=model,
        tokenizer=tok,
        n_layers=n_blocks + 1,
        has_attention=has_attention,
        is_causal=is_causal,
        random_init=got.random_init,
        max_positions=max_positions(model.config),
        layer_map=layer_map_text(model),
        provenance=_provenance(spec, got, model, dtype, seed, n_blocks),
        weights_note=got.note,
    )


@dataclass
class _Weights:
    """What a spec's loader found, before the dtype and the device are applied."""

    model: nn.Module
    tokenizer: object
    source: str
    revision: str | None = None
    random_init: bool = False
    note: str | None = None  # as LoadedModel.weights_note
    extra: dict = field(default_factory=dict)  # further provenance (GGUF hash, cache, licence)


def _dtype(spec: str, dtype: str | None) -> str:
    """The dtype asked for, else a builtin model's own default, else float32."""
    if dtype is None:
        dtype = (
            builtin.builtin(spec.removeprefix("builtin:")).dtype
            if spec.startswith("builtin:")
            else "float32"
        )
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return dtype


def _load_spec(
    spec, revision, allow_pickle, trust_remote_code, attn_implementation, device, seed
) -> _Weights:
    """The model and tokenizer a spec names, with where they came from."""
    if spec.startswith("tiny:"):
        return _Weights(
            builtin.tiny_model(spec.removeprefix("tiny:"), seed, attn_implementation),
            builtin.tiny_tokenizer(),
            spec,
            random_init=True,
        )
    if spec.startswith("builtin:"):
        return _builtin(spec.removeprefix("builtin:"), attn_implementation, device)
    if spec.startswith("gguf:") or spec.endswith(".gguf"):
        from jbtrace.models import gguf

        path = Path(spec.removeprefix("gguf:")).expanduser()
        folder, sha = gguf.from_path(path)
        model, tok, _ = _pretrained(str(folder), None, False, False, attn_implementation, device)
        extra = {"gguf_sha256": sha, "cache": str(folder)}
        return _Weights(model, tok, str(path.resolve()), note="GGUF, de-quantized", extra=extra)
    model, tok, source = _pretrained(
        spec, revision, allow_pickle, trust_remote_code, attn_implementation, device
    )
    return _Weights(model, tok, source, revision)


def _builtin(key: str, attn_implementation: str | None, device: str) -> _Weights:
    """A builtin model: an encoder from its package, or a GGUF file's de-quantized cache."""
    entry, folder = builtin.builtin(key), builtin.builtin_folder(key)
    note, extra = None, {}
    if entry.sha256 is None:
        model, tok = builtin.encoder(folder, attn_implementation)
    else:
        model, tok, _ = _pretrained(str(folder), None, False, False, attn_implementation, device)
        note = f"{entry.quantization} GGUF, de-quantized"
        extra = {"gguf_sha256": entry.sha256, "cache": str(folder)}
    source = f"{builtin.package_versions(key)} ({entry.gguf_name or folder.name})"
    extra["licence"] = entry.licence
    return _Weights(model, tok, source, note=note, extra=extra)


def _provenance(
    spec: str, got: _Weights, model: nn.Module, dtype: str, seed: int, n_blocks: int
) -> dict:
    """What the store records about a loaded model."""
    return {
        "spec": spec,
        "source": got.source,
        "revision": got.revision,
        "class": type(model).__name__,
        "model_type": model.config.model_type,
        "dtype": dtype,
        "device": str(next(model.parameters()).device),
        "random_init": got.random_init,
        "seed": seed if got.random_init else None,
        "blocks": n_blocks,
        "layer_map": layer_map_text(model),
        "weights": got.note or ("random-init" if got.random_init else "as stored"),
        **got.extra,
    }


def _file_label(spec: str) -> str:
    path = Path(spec.removeprefix("gguf:"))
    return (path.stem if path.suffix == ".gguf" else path.name) or spec


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: choose cpu, cuda or auto")
    return torch.device(device)


def _is_dispatched(model: nn.Module) -> bool:
    return bool(getattr(model, "hf_device_map", None))


def _pretrained(spec, revision, allow_pickle, trust_remote_code, attn_implementation, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    local = path.exists()
    if local:
        if not (path / "config.json").is_file():
            raise UserError(
                f"{spec}: a model directory needs a config.json (saved with save_pretrained)"
            )
        has_safe = any(path.glob("*.safetensors"))
        if not has_safe and any(path.glob("*.bin")) and not allow_pickle:
            raise UserError(
                f"{spec}: weights are pickle-only (.bin); "
                "pass --allow-pickle if you trust this file"
            )
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(
            f"unknown model {spec!r}: not a directory, a hub id, tiny:ARCH or builtin:NAME"
        )
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(spec, **common)
        kwargs = {"use_safetensors": None if allow_pickle else True}
        if getattr(config, "model_type", "") not in ("mamba", "mamba2"):
            kwargs["attn_implementation"] = attn_implementation or "sdpa"
        if device == "auto" and torch.cuda.is_available():
            kwargs["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(spec, config=config, **common, **kwargs)
        tok = AutoTokenizer.from_pretrained(spec, **common)
    except UserError:
        raise
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met more than tensors
        raise UserError(
            f"{spec}: its .bin weights hold objects other than tensors; "
            "loading them was blocked (they could run code)"
        ) from None
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model {spec!r}: {first}") from None
    return model, tok, str(path.resolve()) if local else spec
