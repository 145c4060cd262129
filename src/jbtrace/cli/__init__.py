"""The ``jbtrace`` command. Thin: parse options, call one library function, print, exit.

A user error (bad file, unknown model, wrong option) ends in one line on stderr and
exit code 2, and leaves no half-written store behind. One module per command group;
importing them registers their commands on ``app``.
"""

from __future__ import annotations

import logging
import sys

# isort: off
from jbtrace.cli import report, run  # noqa: F401  (registered first: they lead `jbtrace --help`)

# isort: on
from jbtrace.cli import attention, detect, guard, info, judges, outcomes  # noqa: F401  (the rest)
from jbtrace.cli.common import app, err
from jbtrace.errors import UserError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app; a user error becomes one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        app()
    except UserError as error:
        err.print(f"jbtrace: error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
