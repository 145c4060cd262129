"""Prompts: named prompt sets from files, the builtin benign corpus, package data and the hub."""

from jbtrace.prompts.load import (
    DAN_MODEL_NAME,
    PromptSet,
    advbench_behaviours,
    list_sources,
    load_prompts,
    parse_prompt_specs,
    texts_sha256,
)

__all__ = [
    "DAN_MODEL_NAME",
    "advbench_behaviours",
    "PromptSet",
    "list_sources",
    "load_prompts",
    "parse_prompt_specs",
    "texts_sha256",
]
