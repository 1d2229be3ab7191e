"""Where a node keeps its state inside a synced folder.

Everything lives in ``FOLDER/.syncron/`` (never indexed, never synced, owner
only). This module only knows the layout; each file's owner reads and writes
its own file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path

import blake3

from syncron_p2p.errors import UsageError
from syncron_p2p.paths import STATE_DIR

INDEX_DB = "index.db"
TMP_DIR = "tmp"
DAMAGED_DIR = "damaged"  # files replaced by a repair (verify), kept for their owner
KEPT_NAME_MAX = 200  # bytes of a kept copy's name (file systems allow 255)


def keep_copy_of(folder: Path, rel: str, source: str) -> str:
    """Copy the file ``source`` (what stands at ``rel``) into ``.syncron/damaged/``
    as ``<rel, / as %>.<n>`` (a hash of ``rel`` when that name would be too
    long), a new name each time; where, relative to ``folder``.

    A copy, not a hard link: reading leaves the file's fingerprint as it is.
    Raises ``OSError``.
    """
    kept_dir = folder / STATE_DIR / DAMAGED_DIR
    kept_dir.mkdir(mode=0o700, exist_ok=True)
    stem = rel.replace("%", "%25").replace("/", "%")
    if len(os.fsencode(stem)) > KEPT_NAME_MAX:
        ext = os.path.splitext(rel)[1]
        ext = ext if len(os.fsencode(ext)) <= 16 else ""
        stem = blake3.blake3(os.fsencode(rel)).hexdigest(length=16) + ext
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    for n in itertools.count(1):
        dest = f"{kept_dir}/{stem}.{n}"
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        shutil.copyfile(source, dest, follow_symlinks=False)  # (the kernel copies)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
    return f"{STATE_DIR}/{DAMAGED_DIR}/{stem}.{n}"


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
