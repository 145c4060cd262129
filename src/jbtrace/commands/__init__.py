"""Commands as library functions: each does the whole job of one `jbtrace` command (loads,
runs, writes the run) and reports through callbacks; the CLI only parses options and prints."""

from jbtrace.commands.compare import compare_run
from jbtrace.commands.detect import detect_options, detect_run, score_run
from jbtrace.commands.extract import extract_run
from jbtrace.commands.guard import guard_run
from jbtrace.commands.merge import merge_run
from jbtrace.commands.outcomes import outcomes_run

__all__ = [
    "compare_run",
    "detect_options",
    "detect_run",
    "extract_run",
    "guard_run",
    "merge_run",
    "outcomes_run",
    "score_run",
]
