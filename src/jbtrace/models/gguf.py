"""GGUF files as ordinary model folders: checked, converted once, cached by sha256.

transformers reads a GGUF file (``gguf_file=``) and de-quantizes its weights, but will not
``save_pretrained`` the result. jbtrace writes what it loaded — the de-quantized state dict
(safetensors, float32), the config without its quantization entry, the generation config and
the tokenizer (chat template included) — into ``CACHE/gguf/SHA256/``, a folder that
``from_pretrained`` reads like any other. The folder is built under a temporary name and
renamed into place, so a failed or killed conversion never leaves an entry that looks complete.
The record (``jbtrace.json``) lists each converted file's size and sha256; an entry is checked
against it before use (the hash once per process and file version), and a damaged or truncated
entry is converted again, or named in one line where the cache cannot be written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from jbtrace.errors import UserError

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
BLOCK = 1 << 20
INFO = "jbtrace.json"  # written last into a converted folder: where it came from


def cache_root() -> Path:
    """``$JBTRACE_CACHE``, else ``$XDG_CACHE_HOME/jbtrace``, else ``~/.cache/jbtrace``."""
    if os.environ.get("JBTRACE_CACHE"):
        return Path(os.environ["JBTRACE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "jbtrace"


def assemble(
    parts: Iterable[Path], sha256: str, dest: Path | None = None, *, what: str = "GGUF file"
) -> None:
    """Check that ``parts`` concatenated in order have ``sha256``; write them to ``dest`` if given.

    A mismatch (a damaged or swapped chunk, a wrong pin) is refused in one line and ``dest``
    removed.
    """
    digest = hashlib.sha256()
    out = open(dest, "wb") if dest is not None else None
    try:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(BLOCK):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
    except OSError as err:
        raise UserError(f"cannot read {what}: {err.strerror}: {err.filename}") from None
    finally:
        if out is not None:
            out.close()
    if digest.hexdigest() != sha256:
        if dest is not None:
            dest.unlink(missing_ok=True)
        raise UserError(
            f"{what}: sha256 {digest.hexdigest()[:16]}… does not match the pinned {sha256[:16]}…; "
            "the file is damaged or not the expected one (reinstall it)"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# (path, size, mtime in ns) -> sha256 of the cache files hashed in this process
_hashed: dict[tuple[str, int, int], str] = {}


def manifest(folder: Path) -> dict[str, dict]:
    """Size and sha256 of each file of a converted folder (its record aside)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != INFO
    }


def damaged(folder: Path) -> str:
    """What is wrong with a completed cache entry, '' when its files match its record."""
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"its {INFO} cannot be read"
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        return "it has no record of its files (an older jbtrace made it)"
    for name, want in files.items():
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            return f"{name} is missing"
        if not isinstance(want, dict) or st.st_size != want.get("size"):
            return f"{name} has {st.st_size} bytes, not the {want.get('size')} it was written with"
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _hashed:
            _hashed[key] = file_sha256(path)
        if _hashed[key] != want.get("sha256"):
            return f"{name} was changed after the conversion (its sha256 differs)"
    return ""


def _discard(folder: Path, wrong: str) -> None:
    """Remove a damaged cache entry so that it is converted again; one line if it cannot be."""
    log.warning("the cached conversion %s is damaged (%s): converting again", folder, wrong)
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=folder.parent))
        folder.rename(trash / folder.name)
    except OSError as err:
        raise UserError(
            f"the cached conversion {folder} is damaged ({wrong}) and cannot be removed "
            f"({err.strerror}): delete it, or set JBTRACE_CACHE to another folder"
        ) from None
    shutil.rmtree(trash, ignore_errors=True)


def converted(sha256: str) -> Path | None:
    """The cached folder of the GGUF file with this sha256, if one was completed and its files
    are the ones written (a damaged entry is removed, to be converted again)."""
    folder = cache_root() / "gguf" / sha256
    if not (folder / INFO).is_file():
        return None
    wrong = damaged(folder)
    if not wrong:
        return folder
    _discard(folder, wrong)
    return None


def convert(sha256: str, write_gguf, *, name: str) -> Path:
    """The cached folder for ``sha256``, converting first if needed.

    ``write_gguf(path)`` puts the GGUF file at ``path`` (a link, or assembled chunks)
    and checks its sha256; ``name`` is the file's name in messages and in the folder's record.
    """
    if (done := converted(sha256)) is not None:
        return done
    root = cache_root() / "gguf"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the model cache {root}: {err.strerror} (set JBTRACE_CACHE)"
        ) from None
    _remove_abandoned(root)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
    except OSError as err:
        raise UserError(
            f"{name} is not in the model cache {root}, which cannot be written "
            f"({err.strerror}): set JBTRACE_CACHE to a writable folder"
        ) from None
    try:
        source = work / "source" / name
        source.parent.mkdir()
        write_gguf(source)
        folder = work / "model"
        _write_folder(source, folder, sha256)
        try:
            folder.rename(root / sha256)
        except OSError:  # another process published the same file first
            if converted(sha256) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root / sha256


def symlink_to(path: Path):
    """A ``write_gguf`` for a file on disk whose sha256 is already known: link to it (no copy)."""
    return lambda dest: dest.symlink_to(path.resolve())


def _write_folder(gguf: Path, folder: Path, sha256: str) -> None:
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(gguf, "rb") as f:
        if f.read(4) != MAGIC:
            raise UserError(f"{gguf.name}: not a GGUF file (it does not start with 'GGUF')")
    log.info("converting %s (sha256 %s) into the cache", gguf.name, sha256)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (
        Exception
    ) as err:  # a damaged or unsupported file fails anywhere in the reader: one line, no cache
        log.debug("GGUF conversion failed", exc_info=True)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{gguf.name}: transformers cannot read this GGUF file "
            f"(damaged, truncated or an unsupported architecture): {first}"
        ) from None
    folder.mkdir()
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    safetensors.torch.save_file(
        _unique_tensors(model.state_dict()), folder / "model.safetensors", metadata={"format": "pt"}
    )
    _record(folder, gguf.name, sha256)


def _record(folder: Path, gguf_name: str, sha256: str) -> None:
    """Write a converted folder's record (last): its source, and each file's size and sha256."""
    import transformers

    info = {
        "gguf_file": gguf_name,
        "sha256": sha256,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "files": manifest(folder),
    }
    (folder / INFO).write_text(json.dumps(info, indent=2))


def _unique_tensors(state: dict) -> dict:
    """The state dict with each storage once.

    Tied embeddings and LM head are saved under the first name.
    """
    seen, out = set(), {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            out[key] = tensor.detach().contiguous()
    return out


def _remove_abandoned(root: Path) -> None:
    """Delete temporary folders of conversions whose process is gone (killed mid-way)."""
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def from_path(path: Path) -> tuple[Path, str]:
    """``gguf:PATH``: the cached folder of a GGUF file on disk (converted on first use) and its
    sha256."""
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    sha256 = file_sha256(path)
    return convert(sha256, symlink_to(path), name=path.name), sha256
