"""Publishing by rename: a command's files (or a whole folder) appear complete or not at all.

A set of files is made in a staging folder ``.KIND-staging-XXXX`` beside its destination. Once
every file is written the folder is renamed ``.KIND-ready-XXXX`` (one atomic rename: from then
on the new set is complete on disk), and its files are moved into the destination, the marker
file ``last`` after the others; the old marker is removed first, so a half-moved set never looks
complete. A kill while staging leaves the old files untouched and a staging folder that the next
publish of that kind (or ``runs.prepare``) removes; a kill while moving leaves a ready folder
that ``recover`` (called by every reader of a run and by the next publish) finishes moving, so the
old result is only ever replaced by the complete new one.

A folder (a saved detector) is staged the same way and swapped in with ``swap_in``: the old folder
renamed aside, the new one renamed into place, then the old one removed; ``readable`` reads the
aside copy if a kill fell between the two renames.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from jbtrace.errors import UserError
from jbtrace.trace import hooks
from jbtrace.trace.hooks import reached  # for stages that cannot import trace

__all__ = [
    "check_folder",
    "others",
    "ordinary",
    "reached",
    "recover",
    "readable",
    "staged",
    "staging_folder",
    "swap_in",
]
STAGING, READY = "staging", "ready"
LAST = ".last"  # in a staging folder: the name of the file to move last


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary(path: Path) -> Path:
    """Give a file the permissions of an ordinary new file (safetensors makes its files
    private)."""
    os.chmod(path, 0o666 & ~_umask())
    return path


def staging_folder(parent: Path, kind: str) -> Path:
    """A new ``parent/.KIND-staging-XXXX`` with the permissions of an ordinary new folder
    (``mkdtemp`` makes it private), after removing stale staging folders of ``kind``."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{kind}-{STAGING}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-{STAGING}-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _move(ready: Path, run_dir: Path) -> None:
    """Move a ready folder's files into ``run_dir``, its marker file (named in ``.last``) after
    the others; remove the folder. Safe to repeat after a kill at any point."""
    marker = ready / LAST
    last = marker.read_text(encoding="utf-8") if marker.is_file() else ""
    if last and (ready / last).exists():
        (run_dir / last).unlink(missing_ok=True)
    files = [p for p in ready.iterdir() if p.name != LAST]
    for path in sorted(files, key=lambda p: (p.name == last, p.name)):
        path.replace(run_dir / path.name)
        hooks.reached("publish-move")
    marker.unlink(missing_ok=True)
    ready.rmdir()


def recover(run_dir: str | Path, kind: str = "*") -> None:
    """Finish the publishes a kill interrupted after their files were complete (ready folders of
    ``kind``, every kind by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for ready in sorted(run_dir.glob(f".{kind}-{READY}-*")):
        if (ready / LAST).is_file():  # only folders staged makes (it writes LAST before READY)
            _move(ready, run_dir)
        elif ready.is_dir() and not any(ready.iterdir()):  # killed just before its removal
            ready.rmdir()


def check_folder(path: str | Path, option: str = "--out") -> None:
    """Refuse, in one line, a destination folder that is a file or lies under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: that is a file, not a folder")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")


def others(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` other than the folders publishing leaves."""
    if not run_dir.is_dir():
        return []
    return sorted(
        p.name for p in run_dir.iterdir() if not any(fnmatch(p.name, n) for n in own_names())
    )


def own_names() -> tuple[str, ...]:
    """Patterns of the folders publishing leaves (what ``--overwrite`` may remove)."""
    return (f".*-{STAGING}-*", f".*-{READY}-*")


def remove_staging(run_dir: Path) -> None:
    """Remove every staging folder in ``run_dir`` (unfinished publishes: nothing of them was
    moved), for a command that has just claimed the run."""
    for stale in run_dir.glob(f".*-{STAGING}-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staged(run_dir: str | Path, last: str, kind: str | None = None):
    """Yield a staging folder inside ``run_dir``; when the block succeeds, publish its files into
    the run (``last`` after the others, so ``last`` present means the set is complete). On a
    failure the run keeps its previous files untouched."""
    run_dir = Path(run_dir)
    kind = kind or Path(last).stem
    recover(run_dir, kind)
    tmp = staging_folder(run_dir, kind)
    try:
        yield tmp
        (tmp / LAST).write_text(last, encoding="utf-8")
        hooks.reached("publish-staged")
        ready = tmp.with_name(tmp.name.replace(f"-{STAGING}-", f"-{READY}-", 1))
        tmp.rename(ready)
        _move(ready, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def aside(target: Path) -> Path:
    """Where ``swap_in`` keeps the previous folder between its two renames."""
    return target.with_name(f".{target.name}.old")


def swap_in(new: Path, target: Path, old: Path | None = None) -> Path:
    """Rename the folder ``new`` to ``target``, a complete one existing at every instant: an
    existing ``target`` is renamed to ``old`` (default ``aside(target)``) first and removed
    after."""
    old = aside(target) if old is None else old
    if target.exists():
        if old.exists():  # left by an older interrupted swap; the current target is complete
            shutil.rmtree(old)
        target.rename(old)
        hooks.reached("publish-swap")
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def readable(target: Path, old: Path | None = None) -> Path:
    """``target``, or the previous folder a kill between ``swap_in``'s renames left aside."""
    old = aside(target) if old is None else old
    return old if not target.exists() and old.is_dir() else target
