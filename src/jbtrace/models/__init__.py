"""Models: loading (``load``), where each architecture keeps its parts (``surgery``), built-in specs (``builtin``)."""

from jbtrace.models.builtin import list_models
from jbtrace.models.load import DTYPES, LoadedModel, load_model

__all__ = ["DTYPES", "LoadedModel", "list_models", "load_model"]
