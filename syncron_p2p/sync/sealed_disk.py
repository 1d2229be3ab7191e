"""A :class:`~syncron_p2p.sync.disk.Disk` wrapper for key-holders of ``.secure`` files.

A key-holder keeps protected files in plaintext in its working tree, while
their records describe the *sealed object* (``crypto/sealed.py``) that the
engine fetches, verifies and serves. This wrapper sits between the engine
and any Disk and translates, for sealed paths only:

* ``read_block`` of ciphertext block *i* reads plaintext block *i* (offset
  ``offset - 40*i``, size ``size - 40``) and seals it deterministically;
  the engine then checks its blake3 as for any block;
* temp files hold the ciphertext object, exactly as on a node without the
  key (``.syncron/tmp`` never holds a protected file's plaintext while it is
  being fetched or resumed);
* ``install_file`` opens every block of the ciphertext temp, verifying its
  tag, and writes the plaintext to a second temp that is installed in its
  place only when every block authenticated. A block that fails raises
  :class:`~syncron_p2p.sync.disk.Tampered`: the second temp is deleted, the
  ciphertext temp discarded, the file at the path stays what it was.

The engine tells the wrapper which record a temp is for through the optional
``will_install`` hook (called before a file's content is assembled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import blake3

from syncron_p2p.crypto.sealed import SealError, SealKeys, block_at, open_block, seal_block
from syncron_p2p.index.records import SEAL_OVERHEAD, Block, EntryType, Record
from syncron_p2p.sync.disk import Disk, DiskFailure, Observation, Tampered

MAX_PLANNED = 4096


class SealedDisk:
    """Key-holder view of a folder: plaintext on disk, sealed objects to the engine."""

    def __init__(
        self, inner: Disk, secure_key: bytes, lookup: Callable[[str], Record | None]
    ) -> None:
        self.inner = inner
        self.keys = SealKeys.derive(secure_key)
        self._lookup = lookup  # the index's current record of a path
        self._planned: dict[str, Record] = {}  # temp key -> sealed record it assembles

    # --------------------------------------------------------------- hook

    def will_install(self, record: Record) -> None:
        """The engine will assemble ``record``'s content in temp ``content_hash.hex()``."""
        key = record.content_hash.hex()
        if record.sealed and record.type == EntryType.FILE and not record.deleted:
            if len(self._planned) >= MAX_PLANNED:
                self._planned.pop(next(iter(self._planned)))
            self._planned[key] = record
        else:
            self._planned.pop(key, None)

    # -------------------------------------------------------------- reads

    def observe(self, path: str) -> Observation | None:
        return self.inner.observe(path)

    def read_block(self, path: str, offset: int, size: int) -> bytes | None:
        rec = self._lookup(path)
        if rec is None or not rec.sealed or rec.deleted:
            return self.inner.read_block(path, offset, size)
        idx = block_at(rec.blocks, offset, size)
        if idx is None or size <= SEAL_OVERHEAD:
            return None
        plain = self.inner.read_block(path, offset - SEAL_OVERHEAD * idx, size - SEAL_OVERHEAD)
        if plain is None:
            return None
        return seal_block(self.keys, plain)

    # -------------------------------------------------------------- temps

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        return self.inner.temp_present(key, blocks)

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        self.inner.temp_write(key, offset, data)

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        return self.inner.temp_read(key, offset, size)

    def temp_discard(self, key: str) -> None:
        self._planned.pop(key, None)
        self.inner.temp_discard(key)

    # ----------------------------------------------------------- installs

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        rec = self._planned.get(key)
        if rec is None:
            return self.inner.install_file(path, key, size, mode, expect)
        plain_key = blake3.blake3(b"syncron-plain-temp\x00" + bytes.fromhex(key)).hexdigest()
        self.inner.temp_discard(plain_key)
        written = 0
        try:
            for i, block in enumerate(rec.blocks):
                sealed = self.inner.temp_read(key, block.offset, block.size)
                if sealed is None:
                    raise DiskFailure(f"{path}: the fetched sealed object is incomplete")
                try:
                    plain = open_block(self.keys, sealed)
                except SealError as exc:
                    raise Tampered(f"{path}: block {i} of the sealed object: {exc}") from None
                self.inner.temp_write(plain_key, written, plain)
                written += len(plain)
            obs = self.inner.install_file(path, plain_key, written, mode, expect)
        except Tampered:
            self.inner.temp_discard(plain_key)
            self.temp_discard(key)
            raise
        except BaseException:
            self.inner.temp_discard(plain_key)
            raise
        self.temp_discard(key)
        return obs

    def verify_temp(self, key: str) -> None:
        """Raise :class:`Tampered` unless every block of sealed temp ``key`` authenticates."""
        rec = self._planned.get(key)
        if rec is None:
            return
        for i, block in enumerate(rec.blocks):
            sealed = self.inner.temp_read(key, block.offset, block.size)
            if sealed is None:
                raise DiskFailure(f"{rec.path}: the fetched sealed object is incomplete")
            try:
                open_block(self.keys, sealed)
            except SealError as exc:
                self.temp_discard(key)
                raise Tampered(f"{rec.path}: block {i} of the sealed object: {exc}") from None

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        return self.inner.install_dir(path, expect)

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        return self.inner.install_symlink(path, target, expect)

    def remove(self, path: str, expect: Observation | None) -> None:
        self.inner.remove(path, expect)

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        return self.inner.move(src, dst, expect)
