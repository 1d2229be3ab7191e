"""The engine's Disk port on the real filesystem.

Every path goes through :func:`syncron_p2p.paths.safe_join`, so nothing is
ever created, replaced or removed outside the folder or through a symlink.
New content is assembled in ``.syncron/tmp/<content-hash>.part`` (which also
makes interrupted transfers resumable: finished blocks are found again by
hashing what the temp file holds), fsynced, checked against the expectation,
then renamed into place and the directory fsynced: a crash at any instant
leaves the old file or the new one, never a torn one.

The check-then-rename window cannot be closed on POSIX; it is a few
microseconds, and an edit that lands in it is the same race every sync tool
has. Everything else that changed since the last scan is caught.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import blake3

from syncron_p2p.errors import UnsafePathError
from syncron_p2p.folder import TMP_DIR
from syncron_p2p.index.records import Block, EntryType, StatFingerprint
from syncron_p2p.paths import STATE_DIR, safe_join
from syncron_p2p.sync.disk import (
    DiskFailure,
    LocalChanged,
    NotEmpty,
    Observation,
    ParentNotDirectory,
)

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class RealDisk:
    """:class:`syncron_p2p.sync.disk.Disk` on a real folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / STATE_DIR / TMP_DIR
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)

    # ------------------------------------------------------------ helpers

    def _path(self, rel: str) -> Path:
        try:
            return safe_join(self.root, rel)
        except UnsafePathError as exc:
            # A symlink or file now sits where a directory was: the disk changed.
            raise ParentNotDirectory(str(exc)) from None

    def _temp(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise DiskFailure(f"bad temp key {key!r}")
        return self.tmp / f"{key}.part"

    def observe(self, path: str) -> Observation | None:
        try:
            p = self._path(path)
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError, LocalChanged):
            return None
        except OSError as exc:
            raise DiskFailure(f"cannot stat {path}: {exc.strerror}") from None
        return _observation(p, st)

    def _check(self, path: str, expect: Observation | None) -> Observation | None:
        now = self.observe(path)
        if not _matches(now, expect):
            raise LocalChanged(f"{path} is not what the index says")
        return now

    # ------------------------------------------------------------- reads

    def read_block(self, path: str, offset: int, size: int) -> bytes | None:
        try:
            fd = os.open(self._path(path), os.O_RDONLY | _O_NOFOLLOW)
        except (OSError, LocalChanged):
            return None
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == size else None

    # ------------------------------------------------------------- temps

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        temp = self._temp(key)
        try:
            fd = os.open(temp, os.O_RDONLY | _O_NOFOLLOW)
        except OSError:
            return set()
        present: set[int] = set()
        try:
            have = os.fstat(fd).st_size
            for i, b in enumerate(blocks):
                if b.offset + b.size > have:
                    break
                data = os.pread(fd, b.size, b.offset)
                if blake3.blake3(data).digest() == b.hash:
                    present.add(i)
        finally:
            os.close(fd)
        return present

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        try:
            fd = os.open(self._temp(key), os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view = view[n:]
                    offset += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise DiskFailure(f"cannot write temp file: {exc.strerror}") from None

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        try:
            fd = os.open(self._temp(key), os.O_RDONLY | _O_NOFOLLOW)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == size else None

    def temp_discard(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._temp(key).unlink()

    # ---------------------------------------------------------- installs

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        temp = self._temp(key)
        target = self._path(path)
        with _failing(f"cannot install {path}"):
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, size)
                os.fchmod(fd, mode & 0o777)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._check(path, expect)
            self._make_parents(path)
            self._clear(path, target, expect, keep_file=True)
            os.replace(temp, target)
            _fsync_dir(target.parent)
        return self._observed(path)

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        target = self._path(path)
        with _failing(f"cannot create directory {path}"):
            now = self._check(path, expect)
            if now is not None and now.type == EntryType.DIRECTORY:
                return now
            self._make_parents(path)
            self._clear(path, target, expect)
            target.mkdir(mode=0o755)
        return self._observed(path)

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        dest = self._path(path)
        with _failing(f"cannot create symlink {path}"):
            self._check(path, expect)
            self._make_parents(path)
            self._clear(path, dest, expect)
            os.symlink(target, dest)
        return self._observed(path)

    def remove(self, path: str, expect: Observation | None) -> None:
        target = self._path(path)
        with _failing(f"cannot remove {path}"):
            self._check(path, expect)
            if expect is not None:
                self._clear(path, target, expect)

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        source, dest = self._path(src), self._path(dst)
        with _failing(f"cannot move {src} to {dst}"):
            self._check(src, expect)
            if self.observe(dst) is not None:
                raise LocalChanged(f"{dst} already exists")
            self._make_parents(dst)
            os.rename(source, dest)
            _fsync_dir(dest.parent)
        return self._observed(dst)

    # ---------------------------------------------------------- internals

    def _observed(self, path: str) -> Observation:
        obs = self.observe(path)
        if obs is None:
            raise DiskFailure(f"{path} vanished right after it was written")
        return obs

    def _make_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        current = self.root
        for part in parts:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                current.mkdir(mode=0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ParentNotDirectory(f"{current.relative_to(self.root)} is not a directory")

    def _clear(
        self, path: str, target: Path, expect: Observation | None, keep_file: bool = False
    ) -> None:
        """Remove what ``expect`` says is at ``target`` (already checked).

        ``keep_file``: a file there will be replaced atomically by a rename,
        so it is left in place until then.
        """
        if expect is None:
            return
        if expect.type == EntryType.DIRECTORY:
            try:
                target.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise NotEmpty(f"{path}: directory not empty") from None
                raise
        elif expect.type == EntryType.SYMLINK or not keep_file:
            target.unlink()


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Turn an OS error into a DiskFailure saying what failed.

    LocalChanged passes through untouched: it is the engine's cue to rescan.
    """
    try:
        yield
    except OSError as exc:
        raise DiskFailure(f"{what}: {exc.strerror}") from None


def _observation(p: Path, st: os.stat_result) -> Observation | None:
    if stat.S_ISDIR(st.st_mode):
        return Observation(EntryType.DIRECTORY)
    if stat.S_ISLNK(st.st_mode):
        try:
            return Observation(EntryType.SYMLINK, target=os.readlink(p))
        except OSError:
            return Observation(EntryType.SYMLINK)
    if stat.S_ISREG(st.st_mode):
        fp = StatFingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        return Observation(EntryType.FILE, fp)
    return Observation(EntryType.FILE, StatFingerprint(-1, -1, -1, -1))  # special: never matches


def _matches(now: Observation | None, expect: Observation | None) -> bool:
    if now is None or expect is None:
        return now is None and expect is None
    if now.type != expect.type:
        return False
    if now.type == EntryType.FILE:
        return expect.fingerprint is not None and now.fingerprint == expect.fingerprint
    if now.type == EntryType.SYMLINK:
        return now.target == expect.target
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
