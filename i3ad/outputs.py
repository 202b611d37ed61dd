"""Where results go: output folders are checked for writing before the work that fills them, not after it; a
checkpoint folder that a failed training run leaves empty is removed again; tables and checkpoint files are replaced
whole or not at all, and flushed to the disk (fsync) before the function that writes them returns."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pandas as pd


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written into it, so that a run that is going to save
    there finds out before its work, not after. ValueError naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"cannot write to {folder} ({error.strerror or error})") from None
    return folder


@contextlib.contextmanager
def removed_if_left_empty(folder: str | Path) -> Iterator[None]:
    """Run the work that fills ``folder``; if it fails or is interrupted, the folders on the way to it that did not
    exist before and are still empty are removed again, so that no empty checkpoint folder is left behind."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # the deepest first
    try:
        yield
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):  # something was written into it (or it is gone): kept as it is
                path.rmdir()
        raise


# A staged file older than this was left by a run killed while writing (a write takes seconds), and is removed.
STALE_STAGED_SECONDS = 3600


def staged_path(path: Path) -> Path:
    """Where a file is written before it replaces ``path``: beside it (a rename within one folder is atomic) and named
    per process, so that two processes writing the same file never write into one temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def remove_stale_staged(path: Path) -> None:
    """Remove the staged files of ``path`` (``staged_path``'s names, whatever the process number) that runs killed
    while writing it left behind: those older than STALE_STAGED_SECONDS (a younger one may be a write in progress)."""
    prefix, cutoff = f".{path.name}.", time.time() - STALE_STAGED_SECONDS
    for staged in path.parent.glob(f"{glob.escape(prefix)}*.partial"):
        if not staged.name[len(prefix) : -len(".partial")].isdigit():  # another file's, e.g. ".x.csv.bak.1.partial"
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if staged.stat().st_mtime < cutoff:
                staged.unlink()


def write_staged(path: Path, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write the staged file of ``path`` (``staged_path``) with ``write(file)`` and flush it to the disk; a staged file
    left half-written by an error is removed, and so are those of killed runs (``remove_stale_staged``). Returns the
    staged file, for ``os.replace`` into ``path``."""
    staged = staged_path(path)
    try:
        with open(staged, mode, newline=None if "b" in mode else "") as file:  # created by open(): the umask applies
            write(file)
            file.flush()
            os.fsync(file.fileno())  # else a power cut after the rename can leave an empty file in its place
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    remove_stale_staged(path)
    return staged


# What opening or flushing a folder may answer where the system does not allow it (some network and FUSE file systems,
# a folder this user may write but not read); any other error, such as EIO, is a failed write and is raised.
_FOLDER_SYNC_REFUSALS = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EBADF}


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the renames into it) to the disk, where the system allows it: only on POSIX systems
    (elsewhere a folder cannot be opened for this), and not where it refuses (_FOLDER_SYNC_REFUSALS); the files
    themselves are flushed already."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        if error.errno not in _FOLDER_SYNC_REFUSALS:
            raise


def write_csv(table: pd.DataFrame, path: str | Path, float_format: str) -> None:
    """Write ``table`` to ``path`` through a temporary file beside it, so that a run killed (or a disk filling up)
    while writing leaves the previous version whole instead of a truncated one."""
    path = Path(os.path.realpath(path))  # through a link, as writing in place did, not over it
    staged = write_staged(path, lambda file: table.to_csv(file, index=False, float_format=float_format))
    try:
        if path.exists():
            shutil.copymode(path, staged)  # a table replaced keeps its permissions
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
