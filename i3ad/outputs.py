"""Where results go: output folders are checked for writing before the work that fills them, not after it."""

from __future__ import annotations

import tempfile
from pathlib import Path


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
