"""Models: loading (``load``), where each architecture keeps its parts (``surgery``), built-in
specs (``builtin``), GGUF files (``gguf``)."""

from jbtrace.models.builtin import list_models, list_paper_models, preset
from jbtrace.models.load import DTYPES, LoadedModel, load_model

__all__ = ["DTYPES", "LoadedModel", "list_models", "list_paper_models", "load_model", "preset"]
