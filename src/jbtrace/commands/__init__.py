"""Commands as library functions: each does the whole job of one `jbtrace` command (loads,
runs, writes the run) and reports through callbacks; the CLI only parses options and prints."""

from jbtrace.commands.compare import compare_run
from jbtrace.commands.detect import detect_options, detect_run, score_run
from jbtrace.commands.extract import extract_run
from jbtrace.commands.guard import guard_run
from jbtrace.commands.merge import merge_run
from jbtrace.commands.options import ModelOptions, PromptOptions, RunOptions
from jbtrace.commands.outcomes import outcomes_run
from jbtrace.commands.plot import plot_run
from jbtrace.commands.report import report_run
from jbtrace.commands.run import RunResult, demo_run, run_pipeline

__all__ = [
    "ModelOptions",
    "PromptOptions",
    "RunOptions",
    "RunResult",
    "compare_run",
    "demo_run",
    "detect_options",
    "detect_run",
    "extract_run",
    "guard_run",
    "merge_run",
    "outcomes_run",
    "plot_run",
    "report_run",
    "run_pipeline",
    "score_run",
]
