"""Files that are whole or absent, and folders named by their content: the two habits every cache, record
and checkpoint of a search relies on to survive a kill and to be found again by the next run."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fsd.logs import console


def absolute(name: str | None) -> str | None:
    """A local path made absolute, anything else (a hub id, `packaged-minilm`) as it is: the one spelling of a
    model or data folder in every key built from it, so `python -m fsd.cli` and `tune_main.py` find the same
    teacher in one storage, and Ray trials, which run in other folders, find the files."""
    if name is None:
        return None
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes of the disk `path` is on (its nearest existing parent, for a folder not made yet)."""
    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def content_key(value: Any, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `value`: a string as it is, anything else as its JSON
    with sorted keys (values JSON cannot hold as their `str`)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def created_mode(mode: int) -> int:
    """`mode` under the process's umask: what `open` or `mkdir` would give a new file or folder."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write; it replaces `path` when the block ends without an error
    and is removed otherwise, so `path` is never half-written (nor is another writer's temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, created_mode(0o666))  # mkstemp's 0600 would hide the file from colleagues and other nodes
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` to `path` through `atomic_file`; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


@contextmanager
def atomic_folder(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside `final` to fill; renamed to `final` when the block ends without an
    error, removed otherwise. A `final` that exists by then is removed first with `replace` (a left-over
    that is not whole), else kept: another process finished the same content first, and theirs is as good."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(created_mode(0o777))
    try:
        yield tmp
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if replace or not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def one_builder(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` while `path` is built, so processes sharing a storage folder
    (two searches, a search and a comparison) build it once: a second one waits here, saying so through
    the console, and then finds it built. The caller checks again inside the block whether `path` is there.

    `flock` belongs to the open file: the kernel releases it when its holder dies, however it dies. After a
    block that ended well the lock file is removed (`path` is there now: whoever still waits on the removed
    file finds it built, and nobody new takes a lock); after a failure it stays, so that the next builders
    queue on the same file.
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.info(f"{what}: another process is building it ({path}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
            with suppress(FileNotFoundError):
                if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:  # still the file this process locked
                    lock.unlink()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
