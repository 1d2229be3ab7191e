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
* the sealed object of each current version stays in temp
  ``<content hash>`` after it is installed (and the key-holder's scanner
  keeps the one it computes there too): blocks are served from it, checked
  against their hash, and sealed again from the plaintext only when it is
  missing or damaged. Sealing once per version instead of once per block
  served is what keeps protected sync near plain speed; it costs the size of
  the protected files once more, in ciphertext, in ``.syncron/tmp``. A
  version's object is removed when its path gets another version or is
  removed (unless another path has the same content);
* ``install_file`` opens every block of the ciphertext temp, verifying its
  tag, and writes the plaintext to a second temp that is installed in its
  place only when every block authenticated. A block that fails raises
  :class:`~syncron_p2p.sync.disk.Tampered`: the second temp is deleted, the
  ciphertext temp discarded, the file at the path stays what it was.

The engine tells the wrapper which record a temp is for through the optional
``will_install`` hook (called before a file's content is assembled).

Crypto can run in parallel: the driver may pass ``pmap`` (e.g. a thread
pool's ``map``; libsodium releases the GIL). Installs then open a batch of
blocks at once, and serving a block seals the next few blocks of the same
object too, kept in a small cache for the requests that follow (a peer asks
for a window of blocks). With ``submit`` (the pool's ``submit``) each
block is also opened in the background as it arrives, while the transfer
goes on; the plaintext waits in memory (at most :data:`EARLY_BYTES` in all,
never on disk) for the install, which then only writes it. Without either,
everything runs inline.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import blake3

from syncron_p2p.crypto.sealed import SealError, SealKeys, block_at, open_block, seal_block
from syncron_p2p.index.records import SEAL_OVERHEAD, Block, EntryType, Record
from syncron_p2p.sync.disk import Disk, DiskFailure, Observation, Tampered

MAX_PLANNED = 4096
BATCH = 8  # blocks opened (or sealed ahead) at once when crypto runs in parallel
CACHE_BLOCKS = 64  # sealed blocks kept for the requests that follow
MEMO_RECORDS = 64  # records of recently served paths
EARLY_BYTES = 32 * 1024 * 1024  # plaintext opened ahead of installs, in memory

PMap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


class SealedDisk:
    """Key-holder view of a folder: plaintext on disk, sealed objects to the engine."""

    def __init__(
        self,
        inner: Disk,
        secure_key: bytes,
        lookup: Callable[[str], Record | None],
        *,
        pmap: PMap | None = None,
        users: Callable[[bytes], Iterable[Record]] | None = None,
        stamp: Callable[[str], object] | None = None,
        submit: Callable[..., Any] | None = None,
        sealed: Callable[[str], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.keys = SealKeys.derive(secure_key)
        self._lookup = lookup  # the index's current record of a path
        # temp key -> sealed record it assembles (oldest first, dropped in O(1))
        self._planned: OrderedDict[str, Record] = OrderedDict()
        self._pmap = pmap
        self._users = users  # records with a content hash (None: never drop kept objects)
        # A cheap fingerprint of a path's record (its merkle leaf): serving a
        # block then needs no record decoding unless the record changed.
        self._stamp = stamp
        # Whether a path's record is sealed, without the record (Index.is_sealed):
        # a block of an ordinary file is then served with no lookup at all.
        self._sealed = sealed
        self._records: OrderedDict[str, tuple[object, Record | None]] = OrderedDict()
        self._submit = submit
        # temp key -> block index -> (future plaintext, its size), opened on arrival
        self._early: dict[str, dict[int, tuple[Any, int]]] = {}
        self._early_bytes = 0
        self._ahead = BATCH if pmap is not None else 1
        # (path, content hash, offset) -> sealed block, sealed ahead of its request
        self._cache: OrderedDict[tuple[str, bytes, int], bytes] = OrderedDict()

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if self._pmap is None or len(items) < 2:
            return [fn(x) for x in items]
        return list(self._pmap(fn, items))

    def _forget_cached(self, path: str) -> None:
        if self._cache:
            for k in [k for k in self._cache if k[0] == path]:
                del self._cache[k]

    # --------------------------------------------------------------- hook

    def will_install(self, record: Record) -> None:
        """The engine will assemble ``record``'s content in temp ``content_hash.hex()``."""
        key = record.content_hash.hex()
        if record.sealed and record.type == EntryType.FILE and not record.deleted:
            if len(self._planned) >= MAX_PLANNED:
                self._planned.popitem(last=False)
            self._planned[key] = record
        else:
            self._planned.pop(key, None)

    # -------------------------------------------------------------- reads

    def observe(self, path: str) -> Observation | None:
        return self.inner.observe(path)

    def _record(self, path: str) -> Record | None:
        if self._stamp is None:
            return self._lookup(path)
        stamp = self._stamp(path)
        memo = self._records.get(path)
        if memo is not None and memo[0] == stamp:
            self._records.move_to_end(path)
            return memo[1]
        rec = self._lookup(path)
        self._records[path] = (stamp, rec)
        while len(self._records) > MEMO_RECORDS:
            self._records.popitem(last=False)
        return rec

    def read_block(
        self, path: str, offset: int, size: int, record: Record | None = None
    ) -> bytes | None:
        if record is None and self._sealed is not None and not self._sealed(path):
            return self.inner.read_block(path, offset, size)
        rec = self._record(path) if record is None else record
        if rec is None or not rec.sealed or rec.deleted:
            return self.inner.read_block(path, offset, size)
        hit = self._cache.pop((path, rec.content_hash, offset), None)
        if hit is not None and len(hit) == size:
            return hit
        idx = block_at(rec.blocks, offset, size)
        if idx is None or size <= SEAL_OVERHEAD:
            return None
        kept = self.inner.temp_read(rec.content_hash.hex(), offset, size)
        if kept is not None and blake3.blake3(kept).digest() == rec.blocks[idx].hash:
            return kept
        plains: list[bytes] = []
        for i in range(idx, min(idx + self._ahead, len(rec.blocks))):
            b = rec.blocks[i]
            plain = self.inner.read_block(
                path, b.offset - SEAL_OVERHEAD * i, b.size - SEAL_OVERHEAD
            )
            if plain is None:
                break
            plains.append(plain)
        if not plains:
            return None
        sealed = self._map(lambda p: seal_block(self.keys, p), plains)
        for i, ct in enumerate(sealed[1:], start=idx + 1):
            self._cache[(path, rec.content_hash, rec.blocks[i].offset)] = ct
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        first: bytes = sealed[0]
        return first

    # -------------------------------------------------------------- temps

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        return self.inner.temp_present(key, blocks)

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        self.inner.temp_write(key, offset, data)
        rec = self._planned.get(key)
        if rec is None or self._submit is None:
            return
        if self._early_bytes + len(data) > EARLY_BYTES:
            return
        idx = block_at(rec.blocks, offset, len(data))
        if idx is None:
            return
        pending = self._early.setdefault(key, {})
        if idx not in pending:
            pending[idx] = (self._submit(_try_open, self.keys, data), len(data))
            self._early_bytes += len(data)

    def _drop_early(self, key: str) -> dict[int, tuple[Any, int]]:
        pending = self._early.pop(key, {})
        self._early_bytes -= sum(size for _, size in pending.values())
        return pending

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        return self.inner.temp_read(key, offset, size)

    def temp_discard(self, key: str) -> None:
        self._planned.pop(key, None)
        self._drop_early(key)
        self.inner.temp_discard(key)

    # ----------------------------------------------------------- installs

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        rec = self._planned.get(key)
        if rec is None:
            return self.inner.install_file(path, key, size, mode, expect)
        previous = self._lookup(path)
        plain_key = blake3.blake3(b"syncron-plain-temp\x00" + bytes.fromhex(key)).hexdigest()
        self.inner.temp_discard(plain_key)
        written = 0
        early = self._drop_early(key)
        try:
            for start in range(0, len(rec.blocks), BATCH):
                batch = list(enumerate(rec.blocks[start : start + BATCH], start=start))
                late = [ib for ib in batch if ib[0] not in early]
                opened = dict(
                    zip(
                        [i for i, _ in late],
                        self._map(lambda ib: self._open_temp(path, key, *ib), late),
                        strict=True,
                    )
                )
                for i, _ in batch:
                    if i in opened:
                        plain = opened[i]
                    else:
                        got = early[i][0].result()
                        if got is None:
                            raise Tampered(f"{path}: block {i} of the sealed object fails")
                        plain = got
                    self.inner.temp_write(plain_key, written, plain)
                    written += len(plain)
            self._forget_cached(path)
            obs = self.inner.install_file(path, plain_key, written, mode, expect)
        except Tampered:
            self.inner.temp_discard(plain_key)
            self.temp_discard(key)
            raise
        except BaseException:
            self.inner.temp_discard(plain_key)
            raise
        self._planned.pop(key, None)  # the sealed object stays: blocks are served from it
        if previous is not None and previous.content_hash.hex() != key:
            self._drop_kept(previous)
        return obs

    def _drop_kept(self, old: Record) -> None:
        """Remove ``old``'s kept sealed object unless another path still has it."""
        if self._users is None or not old.sealed or old.deleted:
            return
        if any(r.path != old.path for r in self._users(old.content_hash)):
            return
        self.inner.temp_discard(old.content_hash.hex())

    def _open_temp(self, path: str, key: str, i: int, block: Block) -> bytes:
        sealed = self.inner.temp_read(key, block.offset, block.size)
        if sealed is None:
            raise DiskFailure(f"{path}: the fetched sealed object is incomplete")
        try:
            return open_block(self.keys, sealed)
        except SealError as exc:
            raise Tampered(f"{path}: block {i} of the sealed object: {exc}") from None

    def verify_temp(self, key: str) -> None:
        """Raise :class:`Tampered` unless every block of sealed temp ``key`` authenticates."""
        rec = self._planned.get(key)
        if rec is None:
            return
        for start in range(0, len(rec.blocks), BATCH):
            batch = list(enumerate(rec.blocks[start : start + BATCH], start=start))
            try:
                self._map(lambda ib: self._open_temp(rec.path, key, *ib), batch)
            except Tampered:
                self.temp_discard(key)
                raise

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        return self.inner.install_dir(path, expect)

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        return self.inner.install_symlink(path, target, expect)

    def remove(self, path: str, expect: Observation | None) -> None:
        self._forget_cached(path)
        old = self._lookup(path)
        self.inner.remove(path, expect)
        if old is not None:
            self._drop_kept(old)

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        self._forget_cached(src)
        return self.inner.move(src, dst, expect)

    def keep_copy(self, path: str, expect: Observation | None) -> tuple[str, Observation | None]:
        self._forget_cached(path)
        return self.inner.keep_copy(path, expect)

    def sync_temps(self, keys: Sequence[str]) -> None:
        # A sealed temp is opened into a plain temp at install time, which
        # the inner disk makes durable then; syncing the sealed one is waste.
        self.inner.sync_temps([k for k in keys if k not in self._planned])

    def begin_sync_temps(self, keys: Sequence[str]) -> int:
        return self.inner.begin_sync_temps([k for k in keys if k not in self._planned])

    def temps_synced(self, ticket: int) -> bool:
        return self.inner.temps_synced(ticket)

    def sync_installed(self) -> None:
        self.inner.sync_installed()


def _try_open(keys: SealKeys, sealed: bytes) -> bytes | None:
    """:func:`open_block` for a background task: None when it fails."""
    try:
        return open_block(keys, sealed)
    except SealError:
        return None
