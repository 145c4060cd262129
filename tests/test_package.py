"""The package's shape: light import, entry points importable from `jbtrace`, imports pointing
down the stages."""

import ast
import pathlib
import subprocess
import sys

import jbtrace

SRC = pathlib.Path(jbtrace.__file__).parent
# a stage may import itself and the stages listed for it, nothing else
ALLOWED = {
    "prompts": set(),
    "models": {"prompts"},
    "trace": {"prompts", "models"},
    "analysis": {"prompts", "models", "trace"},
    "detect": {"prompts", "models", "trace"},
    "defend": {"prompts", "models", "trace", "analysis", "detect"},
    "views": {"prompts", "models", "trace", "analysis", "detect", "defend"},
    "commands": {"prompts", "models", "trace", "analysis", "detect", "defend", "views"},
}


def test_import_is_light():
    code = "import sys, jbtrace; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_entry_points_resolve():
    for name in jbtrace.__all__:
        assert getattr(jbtrace, name) is not None
    from jbtrace.analysis.compare import compare
    from jbtrace.trace.store import open_run

    assert jbtrace.compare is compare and jbtrace.open_run is open_run


def _imported_stages(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        if isinstance(node, ast.ImportFrom) and node.module == "jbtrace":
            names = [f"jbtrace.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("jbtrace.") and n.count(".") >= 1}
    return found & set(ALLOWED)


def test_imports_point_down_the_stages():
    for stage, allowed in ALLOWED.items():
        for path in (SRC / stage).rglob("*.py"):
            upward = _imported_stages(path) - allowed - {stage}
            assert not upward, f"{path.relative_to(SRC)} imports {sorted(upward)}"
