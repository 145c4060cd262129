"""Long documentation passages from installed packages, for summarise/translate/explain prompts.

Docstrings are read from source files with `ast` (the packages are never imported). Every
passage records where it came from (package, version, file, object) and its licence. Only
files under a package's own licence are read: vendored folders are skipped, and so is any
file that names a licence other than the package's.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jbtrace.errors import UserError


@dataclass(frozen=True)
class Origin:
    """A documented package: where its files are and under which licence."""

    package: str
    root: Path
    version: str
    licence: str
    licence_file: Path
    skip: tuple[str, ...]  # path parts that mark vendored or test code


@dataclass(frozen=True)
class Passage:
    text: str
    origin: str  # "scikit-learn 1.9.1: sklearn/cluster/_kmeans.py: KMeans"
    licence: str


VENDORED = (
    "tests",
    "test",
    "externals",
    "_vendored",
    "vendored",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "site-packages",
    "ensurepip",
    "__phello__",
)
EXAMPLES = re.compile(r"\n(Examples|Example|See Also|References|Notes)\n-{3,}\n.*", re.S)
FOREIGN_LICENCE = re.compile(r"licen[cs]e", re.I)


def distribution_origin(dist_name: str, package: str, licence: str, licence_name: str) -> Origin:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{dist_name} is not installed: pip install {dist_name}") from None
    root = Path(dist.locate_file(package))
    licence_file = next(
        p
        for p in map(Path, (dist.locate_file(f) for f in dist.files or []))
        if p.name == licence_name
    )
    return Origin(dist_name, root, dist.version, licence, licence_file, VENDORED)


def stdlib_origin() -> Origin:
    root = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, __import__("sys").version_info[:3]))
    return Origin("python-stdlib", root, version, "PSF-2.0", root / "LICENSE.txt", VENDORED)


def _clean(doc: str) -> str:
    """Drop numpydoc Examples/Notes/References sections and doctest blocks (prompts, output)."""
    kept, in_doctest = [], False
    for line in EXAMPLES.sub("", doc).splitlines():
        in_doctest = line.lstrip().startswith(">>>") or (in_doctest and line.strip() != "")
        if not in_doctest:
            kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def _own_licence(text: str, licence: str) -> bool:
    """False where a file mentions a licence other than `licence` (vendored or relicensed code)."""
    mentions = [m.start() for m in FOREIGN_LICENCE.finditer(text)]
    return not mentions or (licence != "PSF-2.0" and f"SPDX-License-Identifier: {licence}" in text)


def _docstrings(path: Path, relative: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = ast.get_docstring(tree)
    if module:
        yield "module", module
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield node.name, doc


def passages(origin: Origin, min_words: int = 120, max_words: int = 650) -> list[Passage]:
    """Every docstring of `origin` with `min_words`..`max_words` words of prose after cleaning,
    in path order."""
    found = []
    for path in sorted(origin.root.rglob("*.py")):
        relative = path.relative_to(origin.root.parent).as_posix()
        if any(part in origin.skip for part in path.relative_to(origin.root).parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if not _own_licence(text, origin.licence):
                continue
            docs = list(_docstrings(path, relative))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for name, doc in docs:
            doc = _clean(doc)
            words = doc.split()
            letters = sum(w.isalpha() for w in words)
            if (
                min_words <= len(words) <= max_words
                and letters >= 0.6 * len(words)
                and "\n\n" in doc
            ):
                found.append(
                    Passage(
                        doc,
                        f"{origin.package} {origin.version}: {relative}: {name}",
                        origin.licence,
                    )
                )
    return found


def sample(found: list[Passage], count: int, seed: int) -> list[Passage]:
    """A seeded sample of `count` passages with distinct texts, in path order."""
    unique = list({p.text: p for p in found}.values())
    chosen = np.sort(
        np.random.default_rng(seed).choice(len(unique), size=min(count, len(unique)), replace=False)
    )
    return [unique[i] for i in chosen]
