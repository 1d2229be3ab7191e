"""Where a node keeps its state inside a synced folder.

Everything lives in ``FOLDER/.syncron/`` (never indexed, never synced, owner
only). This module only knows the layout; each file's owner reads and writes
its own file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat
from pathlib import Path

import blake3

from syncron_p2p.errors import UsageError
from syncron_p2p.paths import STATE_DIR

INDEX_DB = "index.db"
TMP_DIR = "tmp"
DAMAGED_DIR = "damaged"  # files replaced by a repair (verify), kept for their owner
KEPT_NAME_MAX = 200  # bytes of a kept copy's name (file systems allow 255)
# Kept copies of the edits made to a protected file on a node without the
# secure key: never synced, one per path, the latest.
UNSYNCED_SUFFIX = "unsynced"


def keep_copy_of(
    folder: Path,
    rel: str,
    source: str,
    *,
    suffix: str | None = None,
    same_as: tuple[int, int, int] | None = None,
) -> str:
    """Copy the regular file ``source`` (what stands at ``rel``) into
    ``.syncron/damaged/``; where, relative to ``folder``. Raises ``OSError``.

    Named ``<rel, % as %25 and / as %2F>.<n>`` (no two paths share a name:
    with ``/`` as a bare ``%``, ``a%`` and ``a/25`` did, and the kept edit of
    one replaced the other's), or ``%H<hash of rel>`` when that name would be
    too long; a new ``n`` each time - or, with ``suffix``, ``<...>.<suffix>``,
    replacing the previous copy of that name (one per path). ``same_as``:
    the (size, mtime_ns, inode) the file must still have, or nothing is kept
    (``OSError(ESTALE)``). Nothing is followed: not a symlink at ``source``
    (a regular file only), nor one standing for ``damaged/``. A copy, not a
    hard link: reading leaves the file's fingerprint as it is; made under a
    temporary name first, so a copy is never half there under its name.
    """
    kept_dir = folder / STATE_DIR / DAMAGED_DIR
    kept_dir.mkdir(mode=0o700, exist_ok=True)
    stem = rel.replace("%", "%25").replace("/", "%2F")
    if len(os.fsencode(stem)) > KEPT_NAME_MAX:
        ext = os.path.splitext(rel)[1]
        ext = ext if len(os.fsencode(ext)) <= 16 else ""
        # (%H: no escaped path starts so - an escaped one has only %25 and %2F)
        stem = "%H" + blake3.blake3(os.fsencode(rel)).hexdigest(length=16) + ext
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    # (O_NONBLOCK: a FIFO there must not block the open; refused just below)
    src = os.open(source, os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if same_as is not None and same_as != (st.st_size, st.st_mtime_ns, st.st_ino):
            raise OSError(errno.ESTALE, "changed again meanwhile")
        dfd = os.open(kept_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
        try:
            temp = f".{stem[:64]}.{os.urandom(6).hex()}.part"
            dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600, dir_fd=dfd)
            try:
                with os.fdopen(os.dup(src), "rb") as fin, os.fdopen(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                if suffix is not None:
                    name = f"{stem}.{suffix}"
                    os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    for n in itertools.count(1):
                        name = f"{stem}.{n}"
                        try:  # a new name, taken first: never over an earlier copy
                            os.close(
                                os.open(
                                    name,
                                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow,
                                    0o600,
                                    dir_fd=dfd,
                                )
                            )
                        except FileExistsError:
                            continue
                        break
                    os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)
    finally:
        os.close(src)
    return f"{STATE_DIR}/{DAMAGED_DIR}/{name}"


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
