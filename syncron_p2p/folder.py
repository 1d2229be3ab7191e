"""Where a node keeps its state inside a synced folder.

Everything lives in ``FOLDER/.syncron/`` (never indexed, never synced, owner
only). This module only knows the layout; each file's owner reads and writes
its own file.
"""

from __future__ import annotations

import os
from pathlib import Path

from syncron_p2p.errors import UsageError
from syncron_p2p.paths import STATE_DIR

INDEX_DB = "index.db"
TMP_DIR = "tmp"
DAMAGED_DIR = "damaged"  # files replaced by a repair (verify), kept for their owner


def check_folder(folder: Path) -> Path:
    """Resolve a user-given folder, or raise a one-line :class:`UsageError`."""
    try:
        resolved = folder.expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"cannot resolve folder {str(folder)!r}: {exc}") from None
    if not resolved.exists():
        raise UsageError(f"folder {str(folder)!r} does not exist")
    if not resolved.is_dir():
        raise UsageError(f"{str(folder)!r} is not a directory")
    return resolved


def state_dir(folder: Path, create: bool = True) -> Path:
    """``FOLDER/.syncron``, created with mode 0700 when ``create`` is set."""
    path = folder / STATE_DIR
    if create:
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            (path / TMP_DIR).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror}") from None
        if path.is_symlink() or not path.is_dir():
            raise UsageError(f"{path} must be a real directory")
        os.chmod(path, 0o700)
    return path
