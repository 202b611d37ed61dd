"""Where results go: output folders are checked for writing before the work that fills them, not after it; a
checkpoint folder that a failed training run leaves empty is removed again; tables are replaced whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def write_csv(table: pd.DataFrame, path: str | Path, float_format: str) -> None:
    """Write ``table`` to ``path`` through a temporary file beside it, so that a run killed (or a disk filling up)
    while writing leaves the previous version whole instead of a truncated one."""
    path = Path(os.path.realpath(path))  # through a link, as writing in place did, not over it
    # Named per process (two runs writing one table do not share it), created by open() so that the umask applies.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "w", newline="") as file:
            table.to_csv(file, index=False, float_format=float_format)
        if path.exists():
            shutil.copymode(path, temporary)  # a table replaced keeps its permissions
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
