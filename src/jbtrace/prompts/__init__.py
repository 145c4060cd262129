"""Prompts: named prompt sets from files, the builtin benign corpus, package data and the hub."""

from jbtrace.prompts.families import DAN_MODEL_NAME, advbench_behaviours
from jbtrace.prompts.inventory import list_sources
from jbtrace.prompts.sets import PromptSet, load_prompts, parse_prompt_specs, texts_sha256

__all__ = [
    "DAN_MODEL_NAME",
    "advbench_behaviours",
    "PromptSet",
    "list_sources",
    "load_prompts",
    "parse_prompt_specs",
    "texts_sha256",
]
