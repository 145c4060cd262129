"""jbtrace: see and measure what a jailbreak does inside a language model.

The entry points a notebook needs are importable from here; each is loaded on first use, so
``import jbtrace`` stays light (no torch)::

    from jbtrace import load_model, load_prompts, extract, ExtractOptions, open_run, compare
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> module that defines it (imported when the name is first asked for)
_ENTRY_POINTS = {
    "load_prompts": "jbtrace.prompts",
    "PromptSet": "jbtrace.prompts",
    "load_model": "jbtrace.models",
    "extract": "jbtrace.trace.extract",
    "ExtractOptions": "jbtrace.trace.extract",
    "build_store": "jbtrace.trace.store",
    "write_run": "jbtrace.trace.store",
    "open_run": "jbtrace.trace.store",
    "compare": "jbtrace.analysis.compare",
    "detect_model": "jbtrace.detect.train",
    "DetectOptions": "jbtrace.detect.train",
    "Detector": "jbtrace.detect.detector",
    "UserError": "jbtrace.errors",
    "extract_run": "jbtrace.commands",
    "merge_run": "jbtrace.commands",
    "compare_run": "jbtrace.commands",
    "detect_run": "jbtrace.commands",
    "score_run": "jbtrace.commands",
    "guard_run": "jbtrace.commands",
    "outcomes_run": "jbtrace.commands",
}
_ALIASES = {"build_store": "build", "write_run": "write"}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module 'jbtrace' has no attribute {name!r}")
    value = getattr(import_module(_ENTRY_POINTS[name]), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
