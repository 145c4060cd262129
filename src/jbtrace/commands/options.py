"""The options the commands share, in small groups (frozen dataclasses) that hold their defaults.

A command's library function takes the groups it needs: which prompts (`PromptOptions`), which
models and how they load (`ModelOptions`), where the run is written (`RunOptions`), and, from
the stages below, how prompts are tokenized, batched and measured (`trace.extract.ExtractOptions`)
and where the forward passes run (`trace.engine.Engine`). The CLI builds the same groups from its
options (`cli.common.groups`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jbtrace.commands.prompts import load_prompt_sets, model_labels
from jbtrace.errors import UserError

if TYPE_CHECKING:
    from jbtrace.prompts import PromptSet
    from jbtrace.trace.engine import ModelSpec


@dataclass(frozen=True)
class PromptOptions:
    """Which prompts: NAME=SOURCE sets (None: the demo's), the text field, a seeded sample."""

    prompts: tuple[str, ...] | None = None
    text_field: str | None = None
    limit: int | None = None

    def load(self, seed: int, note=None) -> list[PromptSet]:
        """The prompt sets; ``note(line)`` hears what each holds."""
        return load_prompt_sets(self.prompts, self.text_field, self.limit, seed, note=note)


@dataclass(frozen=True)
class ModelOptions:
    """Which models (specs and labels) and how they load."""

    model: tuple[str, ...] = ()
    model_name: tuple[str, ...] | None = None
    dtype: str | None = None  # None: float32, or a builtin model's own default
    device: str = "cpu"
    revision: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def load_options(self) -> dict:
        """What `models.load_model` takes besides the spec, name and seed."""
        return {
            "dtype": self.dtype,
            "device": self.device,
            "revision": self.revision,
            "allow_pickle": self.allow_pickle,
            "trust_remote_code": self.trust_remote_code,
        }

    def labelled(self) -> list[tuple[str, str | None]]:
        """(spec, label) per model; at least one model is needed."""
        if not self.model:
            raise UserError("give at least one --model (see `jbtrace models`)")
        labels = model_labels(list(self.model), self.model_name)
        return list(zip(self.model, labels, strict=True))

    def specs(self, seed: int) -> list[ModelSpec]:
        """One engine `ModelSpec` per model, labelled by its model name."""
        from jbtrace.trace.engine import ModelSpec

        load = self.load_options()
        return [ModelSpec(spec, label, **load, seed=seed) for spec, label in self.labelled()]


@dataclass(frozen=True)
class RunOptions:
    """The run: its directory, whether to replace what it holds, the seed (sampling and
    random-init models)."""

    out_dir: Path = Path("runs/run")
    overwrite: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))  # a str is welcome too
