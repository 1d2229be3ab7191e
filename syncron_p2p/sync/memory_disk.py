"""An in-memory folder implementing the engine's Disk port, plus its scanner.

Used by the simulator and by engine tests. It keeps the real disk's
contract (``node/disk.py``; both pass ``tests/test_disk_contract.py``):
checked replacements, temp files keyed by content, fingerprints that change
on every write. :meth:`MemoryDisk.scan` mirrors ``index/scanner.py``: the
same fingerprint shortcut and the same minting of versions and tombstones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import blake3

from syncron_p2p.folder import DAMAGED_DIR
from syncron_p2p.index.blocks import chunk_bytes
from syncron_p2p.index.forgotten import history
from syncron_p2p.index.records import (
    Block,
    EntryType,
    Record,
    StatFingerprint,
    mint,
    tombstone,
)
from syncron_p2p.paths import STATE_DIR, parent, validate
from syncron_p2p.sync.disk import (
    DiskFailure,
    Flushes,
    LocalChanged,
    NotEmpty,
    Observation,
    ParentNotDirectory,
)

KEPT_PREFIX = f"{STATE_DIR}/{DAMAGED_DIR}/"  # (where RealDisk keeps them too)


@dataclass(slots=True)
class _Entry:
    type: EntryType
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    fp: StatFingerprint | None = None


class ScanTarget(Protocol):
    """What :meth:`MemoryDisk.scan` needs of an index."""

    actor: str

    def get(self, path: str) -> Record | None: ...
    def all(self) -> Iterable[Record]: ...
    def put(self, records: Iterable[Record]) -> list[Record]: ...
    def kv_get(self, ns: str, key: str) -> bytes | None: ...


class MemoryDisk:
    """A folder held in memory (see module docstring)."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.temps: dict[str, bytearray] = {}
        self._clock = 0
        self.writes_outside: list[str] = []  # for invariant checks; must stay empty
        self.kept: list[tuple[str, bytes]] = []  # (path, content) given to keep_copy
        self.temp_syncs = 0  # sync_temps calls (one per install batch)
        self.synced_temps = 0  # temps they covered
        self.flushes = Flushes()  # (held: a slow disk, for tests)

    # ------------------------------------------------------------ user edits

    def _stamp(self, size: int) -> StatFingerprint:
        self._clock += 1
        return StatFingerprint(size, self._clock, self._clock, self._clock)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """A user (or the sim) writes a file, creating parent directories."""
        validate(path)
        self._not_a_directory(path)
        self._parents(path)
        self.entries[path] = _Entry(EntryType.FILE, data, mode, "", self._stamp(len(data)))

    def mkdir(self, path: str) -> None:
        validate(path)
        self._parents(path)
        self.entries.setdefault(path, _Entry(EntryType.DIRECTORY, mode=0o755))

    def symlink(self, path: str, target: str) -> None:
        validate(path)
        self._not_a_directory(path)
        self._parents(path)
        self.entries[path] = _Entry(EntryType.SYMLINK, target=target, mode=0o777)

    def delete(self, path: str) -> None:
        """Delete a path and everything below it."""
        for p in [p for p in self.entries if p == path or p.startswith(path + "/")]:
            del self.entries[p]

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` (and everything below it) to ``dst``, which must not exist."""
        validate(dst)
        if dst in self.entries:
            raise LocalChanged(f"{dst} already exists")
        if dst.startswith(src + "/"):
            raise LocalChanged(f"cannot move {src} into itself")
        self._parents(dst)
        moved = {p: e for p, e in self.entries.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.entries[p]
        self._parents(dst)
        for p, e in moved.items():
            self.entries[dst + p[len(src) :]] = e

    def _not_a_directory(self, path: str) -> None:
        e = self.entries.get(path)
        if e is not None and e.type == EntryType.DIRECTORY:
            raise LocalChanged(f"{path} is a directory")

    def read(self, path: str) -> bytes | None:
        e = self.entries.get(path)
        return e.data if e is not None and e.type == EntryType.FILE else None

    def _parents(self, path: str) -> None:
        """Create missing ancestors; all or nothing, like ``mkdir -p`` failing early."""
        missing: list[str] = []
        d = parent(path)
        while d:
            e = self.entries.get(d)
            if e is None:
                missing.append(d)
            elif e.type != EntryType.DIRECTORY:
                raise ParentNotDirectory(f"{d} is not a directory")
            d = parent(d)
        for d in missing:
            self.entries[d] = _Entry(EntryType.DIRECTORY, mode=0o755)

    # --------------------------------------------------------------- scan

    def scan(self, index: ScanTarget) -> list[Record]:
        """Bring ``index`` up to date with this disk; return the changed records."""
        changed: list[Record] = []
        seen: set[str] = set()
        for path in sorted(self.entries):
            e = self.entries[path]
            seen.add(path)
            old = index.get(path)
            live = old is not None and not old.deleted and old.type == e.type
            # (a path with no record: new, or its tombstone was collected)
            base = history(index, path) if old is None else None
            if e.type == EntryType.DIRECTORY:
                if not live:
                    changed.append(mint(path, e.type, old, index.actor, mode=0o755, base=base))
            elif e.type == EntryType.SYMLINK:
                if not (live and old is not None and old.target == e.target):
                    changed.append(
                        mint(
                            path,
                            e.type,
                            old,
                            index.actor,
                            mode=0o777,
                            content_hash=blake3.blake3(e.target.encode()).digest(),
                            target=e.target,
                            base=base,
                        )
                    )
            else:
                if live and old is not None and old.fingerprint == e.fp and old.mode == e.mode:
                    continue
                digest = blake3.blake3(e.data).digest()
                if live and old is not None and old.content_hash == digest and old.mode == e.mode:
                    changed.append(_refresh(old, e.fp))
                    continue
                changed.append(
                    mint(
                        path,
                        e.type,
                        old,
                        index.actor,
                        size=len(e.data),
                        mode=e.mode,
                        content_hash=digest,
                        blocks=tuple(chunk_bytes(e.data)),
                        fingerprint=e.fp,
                        base=base,
                    )
                )
        for rec in index.all():
            if rec.path not in seen and not rec.deleted:
                changed.append(tombstone(rec, index.actor))
        stored = index.put(changed)
        return [s for s, c in zip(stored, changed, strict=True) if s.sequence != c.sequence]

    # ------------------------------------------------------------ Disk port

    def observe(self, path: str) -> Observation | None:
        e = self.entries.get(path)
        if e is None:
            return None
        return Observation(e.type, e.fp if e.type == EntryType.FILE else None, e.target)

    def _check(self, path: str, expect: Observation | None) -> None:
        now = self.observe(path)
        if now is None or expect is None:
            if not (now is None and expect is None):
                raise LocalChanged(f"{path} is not what the index says")
            return
        if now.type != expect.type:
            raise LocalChanged(f"{path} changed type")
        if now.type == EntryType.FILE and (
            expect.fingerprint is None or now.fingerprint != expect.fingerprint
        ):
            raise LocalChanged(f"{path} changed")
        if now.type == EntryType.SYMLINK and now.target != expect.target:
            raise LocalChanged(f"{path} changed")

    def read_block(
        self, path: str, offset: int, size: int, record: Record | None = None
    ) -> bytes | None:
        e = self.entries.get(path)
        if e is None or e.type != EntryType.FILE or offset + size > len(e.data):
            return None
        return e.data[offset : offset + size]

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        buf = self.temps.get(key)
        if buf is None:
            return set()
        return {
            i
            for i, b in enumerate(blocks)
            if b.offset + b.size <= len(buf)
            and blake3.blake3(bytes(buf[b.offset : b.offset + b.size])).digest() == b.hash
        }

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        buf = self.temps.setdefault(key, bytearray())
        if len(buf) < offset + len(data):
            buf.extend(b"\0" * (offset + len(data) - len(buf)))
        buf[offset : offset + len(data)] = data

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        buf = self.temps.get(key)
        if buf is None or offset + size > len(buf):
            return None
        return bytes(buf[offset : offset + size])

    def temp_discard(self, key: str) -> None:
        self.temps.pop(key, None)

    def _clear(self, path: str, expect: Observation | None) -> None:
        if expect is None:
            return
        if expect.type == EntryType.DIRECTORY and any(
            p.startswith(path + "/") for p in self.entries
        ):
            raise NotEmpty(f"{path}: directory not empty")
        self.entries.pop(path, None)

    def _guard(self, path: str) -> None:
        try:
            validate(path)
        except Exception:
            self.writes_outside.append(path)
            raise DiskFailure(f"refused unsafe path {path!r}") from None
        d = parent(path)
        while d:
            e = self.entries.get(d)
            if e is not None and e.type != EntryType.DIRECTORY:
                raise ParentNotDirectory(f"{d} is not a directory")
            d = parent(d)

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        self._guard(path)
        self._check(path, expect)
        data = bytes(self.temps.pop(key, bytearray()))[:size]
        if len(data) != size:
            raise DiskFailure(f"temp for {path} is short")
        self._clear(path, expect)
        self._parents(path)
        self.entries[path] = _Entry(EntryType.FILE, data, mode, "", self._stamp(size))
        return self.observe(path)  # type: ignore[return-value]

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        self._guard(path)
        self._check(path, expect)
        if expect is not None and expect.type == EntryType.DIRECTORY:
            return expect
        self._clear(path, expect)
        self._parents(path)
        self.entries[path] = _Entry(EntryType.DIRECTORY, mode=0o755)
        return Observation(EntryType.DIRECTORY)

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        self._guard(path)
        self._check(path, expect)
        self._clear(path, expect)
        self._parents(path)
        self.entries[path] = _Entry(EntryType.SYMLINK, target=target, mode=0o777)
        return Observation(EntryType.SYMLINK, target=target)

    def remove(self, path: str, expect: Observation | None) -> None:
        self._guard(path)
        self._check(path, expect)
        self._clear(path, expect)

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        self._guard(dst)
        self._check(src, expect)
        if dst in self.entries:
            raise LocalChanged(f"{dst} already exists")
        self._parents(dst)
        for p in [p for p in self.entries if p == src or p.startswith(src + "/")]:
            self.entries[dst + p[len(src) :]] = self.entries.pop(p)
        return self.observe(dst)  # type: ignore[return-value]

    def keep_copy(self, path: str, expect: Observation | None) -> tuple[str, Observation | None]:
        self._guard(path)
        self._check(path, expect)
        entry = self.entries.get(path)
        if entry is None or entry.type != EntryType.FILE:
            raise LocalChanged(f"{path} is not a file")
        self.kept.append((path, entry.data))
        return f"{KEPT_PREFIX}{len(self.kept)}", self.observe(path)

    def sync_temps(self, keys: Sequence[str]) -> None:
        self.temp_syncs += 1
        self.synced_temps += len(keys)

    def begin_sync_temps(self, keys: Sequence[str]) -> int:
        keys = list(keys)
        return self.flushes.run(lambda: self.sync_temps(keys))

    def temps_synced(self, ticket: int) -> bool:
        return self.flushes.done(ticket)

    def sync_installed(self) -> None:
        pass  # memory: nothing to flush


def _refresh(old: Record, fp: StatFingerprint | None) -> Record:
    return replace(old, fingerprint=fp)
