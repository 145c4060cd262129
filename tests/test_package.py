"""The package's shape: light import, entry points importable from `jbtrace`, imports pointing
down the stages, functions and modules small enough to read."""

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
    "detect": {"prompts", "models"},  # tokenizing lives in models.tokens, not trace
    "defend": {"prompts", "models", "analysis", "detect"},
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


MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def test_functions_and_modules_stay_small():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        text = path.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {n_lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, (
        f"over {MAX_FUNCTION_LINES} lines a function or {MAX_MODULE_LINES} a module:\n"
        + "\n".join(too_long)
    )


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _jbtrace_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The jbtrace modules `path` imports, at module level or inside a function (lazy imports
    count: a circle hidden in a function is still a circle). `from PKG import NAME` points at
    the submodule PKG.NAME where there is one, else at PKG itself (its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found |= subs & modules
            if subs - modules:
                found.add(node.module)
    return found & modules


def test_no_import_cycles():
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {name: _jbtrace_imports(path, set(paths)) - {name} for name, path in paths.items()}
    assert "jbtrace.prompts.sources" in graph["jbtrace.prompts.sets"]  # the walk sees imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target) :] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
