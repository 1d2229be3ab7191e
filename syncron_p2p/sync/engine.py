"""The sans-IO sync engine: ``handle(input, now) -> [effects]``.

One engine per folder. It holds the per-peer sessions, pulls what peers have
that it lacks (merkle descent, ``reconcile.py``), resolves every incoming
record against the local one (``conflicts.py``), plans and verifies block
transfers, applies results through the :class:`~syncron_p2p.sync.disk.Disk`
port and stores them in the index, then announces them to the other peers.

It never awaits and never reads a clock or a random source of its own: the
driver passes ``now`` and a seeded :class:`random.Random`. The index and the
disk are ports: synchronous, and deterministic for a given state, so a
simulation replays exactly from its seed.

Safety rules it keeps:

* every path from a peer is validated (``paths.validate``) before anything
  else; an unsafe record closes the channel and changes nothing;
* every block is verified against its blake3 hash before it is written;
* nothing on disk is replaced or removed unless it still is what the index
  says (the Disk port checks): otherwise a rescan, and the local edit wins
  or becomes a conflict, never lost;
* a conflict's loser is preserved (conflict copy) before the merged result
  is stored, so no node can publish "I have seen X" without X surviving;
* deletions are applied after pending transfers, so a moved file is rebuilt
  from its old local copy instead of being fetched again.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

import blake3

from syncron_p2p.config import Role, Timing
from syncron_p2p.errors import RemoteProtocolError, UnsafePathError
from syncron_p2p.index.forgotten import (
    ANY_FORGOTTEN,
    ENGINE_NS,
    FORGOTTEN_NS,
    any_forgotten,
    encode_vector,
    forgotten,
)
from syncron_p2p.index.merkle import MerkleTree
from syncron_p2p.index.records import (
    EMPTY_HASH,
    Block,
    EntryType,
    Record,
    StatFingerprint,
    entry_digest,
    mint,
    with_local,
)
from syncron_p2p.index.versions import Order, VersionVector
from syncron_p2p.paths import parent, symlink_target_is_safe, validate
from syncron_p2p.protocol.codec import (
    MAX_COUNTER,
    MAX_NODES_PER_REQUEST,
    MAX_VECTOR,
    record_wire_size,
)
from syncron_p2p.protocol.messages import (
    INLINE_FEATURE,
    BlockData,
    BlockMissing,
    BlockRequest,
    Collected,
    Goodbye,
    Hello,
    Message,
    NodeChildren,
    NodeReply,
    NodeRequest,
    NodeSummary,
    Ping,
    Pong,
    RangeRequest,
    RecordRequest,
    Records,
    Root,
)
from syncron_p2p.protocol.session import Session
from syncron_p2p.sync.conflicts import (
    CONFLICT_MARK,
    Outcome,
    Resolution,
    conflict_copy,
    resolve,
)
from syncron_p2p.sync.disk import (
    Disk,
    DiskFailure,
    LocalChanged,
    NotEmpty,
    Observation,
    ParentNotDirectory,
    Tampered,
    expectation,
)
from syncron_p2p.sync.effects import (
    Close,
    Damaged,
    Effect,
    Input,
    LocalChanges,
    Notice,
    PeerDown,
    PeerUp,
    Received,
    Rescan,
    Send,
    Tick,
)
from syncron_p2p.sync.reconcile import Descent

MAX_ACTIVE_JOBS = 512
# Queued records started per handle_many call. Small files that came with
# their content complete at once, so without a cap one call could apply a
# whole initial sync in one transaction while the driver waits; capped, the
# engine asks to be called again at once (next_deadline() == now).
STARTS_PER_CALL = 1024
# Records of range replies sent per peer and call: a reply to a big range
# (an initial sync) goes out over several calls, so the first pages leave -
# and the peer starts applying - while the rest is still being read, and the
# driver's flow control paces the rest.
SERVE_PER_CALL = 2048
SERVE_BYTES = 8 * 1024 * 1024  # ... and about this many bytes (content inline)
# Queued records beyond which the driver should stop feeding (saturated()).
INGEST_HIGH = 2 * STARTS_PER_CALL
# Completed files wait for company before being installed (one pair of disk
# flushes per batch; see Engine._install_due), at most this many / long.
READY_FILES = 256
KEY_OWNERS_SLACK = 1024  # stale content-owner entries tolerated before a prune
READY_BYTES = 64 * 1024 * 1024
READY_DELAY = 0.1
# Install batches whose temps are being flushed at a time (Disk.begin_sync_temps);
# while one flushes, the engine goes on receiving. Polled at least this often.
FLUSHES_IN_FLIGHT = 2
FLUSH_POLL = 0.05
# Block bytes in flight per peer (besides Timing.block_window, a count): small
# files keep many requests in flight, big blocks a few megabytes' worth.
WINDOW_BYTES = 8 * 1024 * 1024
RECORDS_PAGE = 256
# Damaged files whose repairs start at a time: each reads its file to reuse
# what is intact, in the engine's thread.
REPAIRS_PER_CALL = 16
PAGE_BYTES = 512 * 1024
# One-block files up to this size travel inside Records (feature
# "inline-content"): no block round trip per small file. Received content
# waiting in the queue is held up to INLINE_HELD bytes; beyond, it is dropped
# and fetched as blocks later (memory stays bounded whatever a peer sends).
INLINE_MAX = 64 * 1024
INLINE_HELD = 32 * 1024 * 1024
# Version vectors a peer may send: within the codec's limits with room to
# spare - a member pushing our own counter (or a vector's length) to the very
# limit would make our next edit of that path undecodable by every peer.
PLAUSIBLE_COUNTER = MAX_COUNTER // 2
PLAUSIBLE_ACTORS = MAX_VECTOR // 2
# Failed attempts before a structural conflict (a file where a directory must
# be, or a directory that must go but still has entries) is resolved rather
# than waited out: the tombstones that would dissolve it may still be coming.
PATIENCE = 2


class _Unflushed(Exception):
    """The flush after a batch's installs failed: end (roll back) the index batch."""


class Store(Protocol):
    """What the engine needs of an index (``index/db.py`` is the real one)."""

    actor: str
    merkle: MerkleTree

    def get(self, path: str) -> Record | None: ...
    def put(self, records: Iterable[Record]) -> list[Record]: ...
    def in_range(self, start: str | None, end: str | None) -> Iterable[Record]: ...
    def with_content(self, content_hash: bytes, limit: int = 8) -> list[Record]: ...
    def all(self) -> Iterable[Record]: ...
    def forget(self, paths: Iterable[str]) -> None: ...
    def kv_get(self, ns: str, key: str) -> bytes | None: ...
    def kv_put(self, ns: str, key: str, value: bytes | None) -> None: ...
    def batch(self) -> AbstractContextManager[None]:
        """Writes inside are committed together at the end (reads see them)."""
        ...

    @property
    def last_sequence(self) -> int: ...


@dataclass(slots=True)
class PeerState:
    session: Session
    last_heard: float
    last_ping: float = 0.0
    root: bytes | None = None
    root_count: int = 0  # records under the peer's last root
    root_sent: bytes | None = None
    descent: Descent | None = None
    descend_later: bool = False  # roots differed while we were busy
    requests: dict[int, float] = field(default_factory=dict)  # record/node requests
    blocks: dict[int, tuple[str, int, float, int]] = field(
        default_factory=dict
    )  # id -> job, idx, sent, size
    inflight_bytes: int = 0  # sum of the sizes in ``blocks``
    # range replies still to send: [request id, last path sent, end, inline]
    serving: list[tuple[int, str | None, str | None, int]] = field(default_factory=list)
    # block requests still to answer (SERVE_BYTES of them per call: a batch of
    # a thousand 1 MiB requests read at once held a gigabyte of replies)
    block_requests: deque[BlockRequest] = field(default_factory=deque)


@dataclass(slots=True)
class Job:
    """Bringing one path to ``target`` (content fetched into a temp file first)."""

    target: Record  # record to install at target.path
    expect: Observation | None  # what must be at target.path before we touch it
    remote: Record  # the received record this job carries out (re-merged on retry)
    local: Record | None  # the local record of remote.path the plan was made against
    sources: list[str]
    move_local_to: str | None = None  # conflict: rename the local loser here first
    extra: list[Record] = field(default_factory=list)  # more records to store when done
    missing: dict[int, Block] = field(default_factory=dict)
    inflight: dict[int, int] = field(default_factory=dict)  # block idx -> request id
    origin_peer: str = ""
    stalled_since: float | None = None
    repair: bool = False  # restoring a damaged file's recorded content (Damaged)

    @property
    def key(self) -> str:
        return self.target.content_hash.hex()


class Engine:
    """The sync engine of one folder (see module docstring)."""

    def __init__(
        self,
        store: Store,
        disk: Disk,
        node_id: str,
        *,
        role: Role = Role.SEND_RECEIVE,
        timing: Timing | None = None,
        rng: random.Random | None = None,
        members: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.store = store
        self.disk = disk
        self.node_id = node_id
        self.role = role
        self.timing = timing or Timing()
        self.rng = rng or random.Random(0)
        self._members = members
        self.peers: dict[str, PeerState] = {}
        self.jobs: dict[str, Job] = {}
        self.queue: dict[str, tuple[Record, set[str]]] = {}
        self.deletes: dict[str, tuple[Record, str]] = {}
        self.retry: dict[str, tuple[float, Record, str]] = {}
        self._next_id = 1
        self._any_forgotten = any_forgotten(store)
        self.attempts: dict[str, int] = {}
        self._changed = False  # the index changed since we last announced our root
        # peer -> my last_sequence when our roots last matched (outlives connections)
        self.synced: dict[str, int] = {}
        self._next_anti_entropy: float | None = None
        self._next_heartbeat: float | None = None
        self._out: list[Effect] = []
        self._wanting: dict[str, None] = {}  # paths of jobs with blocks to request
        # Jobs of the same content share its temp (the key is the content
        # hash): one at a time. temp key -> path of the job assembling it, and
        # the jobs waiting for that one (prepared once it is done: they then
        # copy the content from the file it installed).
        self._key_owner: dict[str, str] = {}
        # path -> the fingerprint of the keyless user's file kept there (_gives_way)
        self._kept_in_way: dict[str, StatFingerprint] = {}
        self._key_waiting: dict[str, list[tuple[Job, Record | None, tuple[bytes, bytes] | None]]]
        self._key_waiting = {}
        self._ready: list[Job] = []  # all blocks at hand: installed together (_install_due)
        self._ready_since = 0.0  # when the oldest of them became ready
        # Batches whose temps are being made durable: (ticket, jobs), oldest
        # first; their jobs stay in self.jobs until installed.
        self._flushing: deque[tuple[int, list[Job]]] = deque()
        self._outbox: list[tuple[Record, str]] = []  # (stored record, peer not to tell)
        self._batch_stored: list[Record] = []  # stored by the running handle_many
        # While an install batch runs: what its files store, written at its end
        # (one index write for the batch), and the paths concerned.
        self._deferred: list[tuple[list[Record], str]] | None = None
        self._deferred_paths: set[str] = set()
        # queued path -> (block hash, content) received inline (see _hold)
        self._inline: dict[str, tuple[bytes, bytes]] = {}
        self._inline_bytes = 0
        # damaged path -> its record as verified, until a peer is there to
        # restore it from (see _on_damaged)
        self._repairs: dict[str, Record] = {}
        self._now = 0.0
        self._starts = 0  # queued records started in this call (STARTS_PER_CALL)
        self.stats = {
            "conflicts": 0,
            "applied": 0,
            "rejected": 0,
            "blocks_local": 0,
            "blocks_remote": 0,
            "blocks_inline": 0,
            "repaired": 0,
        }

    # ================================================================ entry

    def handle(self, event: Input, now: float) -> list[Effect]:
        """Process one input at time ``now``; return the effects to execute."""
        return self.handle_many((event,), now)

    def handle_many(self, events: Sequence[Input], now: float) -> list[Effect]:
        """Process inputs in order, as one batch; return the effects to execute.

        The batch is the unit of durability (group commit): the files
        completed together are made durable together (``Disk.begin_sync_temps``:
        the flush runs beside the engine, which goes on receiving meanwhile),
        renamed into place by the first call that finds their flush done, the
        renames made durable (``Disk.sync_installed``), and only then is the
        index committed - one transaction per call. A crash at any point
        leaves each file old or new, and the index never ahead of the disk.
        Messages to peers are only returned, so they go out after the commit.
        """
        self._now = now
        self._out = []
        self._starts = 0
        if self._next_anti_entropy is None:
            self._schedule_anti_entropy()
            self._next_heartbeat = now + self.timing.heartbeat_interval
        self._batch_stored = []
        try:
            with self.store.batch():
                for event in events:
                    match event:
                        case PeerUp(peer):
                            self._peer_up(peer)
                        case PeerDown(peer):
                            self._peer_down(peer)
                        case Received(peer, message):
                            self._received(peer, message)
                        case LocalChanges(records):
                            self._local_changes(records)
                        case Tick():
                            self._tick()
                        case Damaged(records):
                            self._on_damaged(records)
                self._pump()
                self._serve_ranges()
                self._serve_blocks()
                try:
                    self.disk.sync_installed()
                except DiskFailure as exc:
                    raise _Unflushed(str(exc)) from None  # ends the batch: nothing stored
        except _Unflushed as exc:
            self._unflushed(str(exc))
        self._flush_announcements()
        out, self._out = self._out, []
        return out

    def _unflushed(self, why: str) -> None:
        """The flush after this batch's installs failed, so the index batch was
        rolled back (the index is never ahead of the disk): announce none of it,
        and rescan what it changed on disk. Peers' records come back by
        anti-entropy; what now stands on disk is found by the rescan."""
        paths = sorted({r.path for r in self._batch_stored})
        self._outbox.clear()
        self._changed = True
        self._notice("error", "", f"{why}; {len(paths)} change(s) not recorded, rescanning")
        if paths:
            self._out.append(Rescan(tuple(paths)))

    def has_more(self) -> bool:
        """The last call stopped early (caps on work per call): call again now."""
        if self.queue and self._starts >= STARTS_PER_CALL:
            return True
        return any(state.serving or state.block_requests for state in self.peers.values())

    def flushing(self) -> bool:
        """Install batches wait for their flush to end (the driver hears of
        it from the disk, and calls again; or at :meth:`next_deadline`)."""
        return bool(self._flushing)

    def saturated(self) -> bool:
        """Enough queued to keep the next calls busy, and they can run by themselves.

        A driver may stop feeding a peer's messages meanwhile (flow control):
        the queue drains through calls the driver makes on its own (has_more),
        or, while the disk is behind (:meth:`_disk_behind`), through the calls
        that follow its flushes (the disk ends them by itself).
        """
        if self._disk_behind():
            return True
        full = len(self.queue) >= INGEST_HIGH or self._inline_bytes >= INLINE_HELD // 2
        full = full or any(len(s.block_requests) >= INGEST_HIGH for s in self.peers.values())
        return full and self.has_more()

    def next_deadline(self) -> float | None:
        """The earliest time :class:`Tick` should be fed again."""
        times = [t for t in (self._next_anti_entropy, self._next_heartbeat) if t is not None]
        times.extend(at for at, _, _ in self.retry.values())
        if self.has_more():
            times.append(self._now)
        if self._ready:
            times.append(self._ready_since + READY_DELAY)
        if self._flushing:
            # (The driver is told when a flush ends; this is the fallback.)
            times.append(self._now + FLUSH_POLL)
        return min(times) if times else None

    # ============================================================== peers

    def _peer_up(self, peer: str) -> None:
        old = self.peers.get(peer)
        if old is not None:
            self._forget_peer(peer)
        session = Session(self.node_id, peer, self.role.value)
        self.peers[peer] = PeerState(session, last_heard=self._now, last_ping=self._now)
        self._send(peer, session.hello)

    def _peer_down(self, peer: str) -> None:
        self._forget_peer(peer)

    def _forget_peer(self, peer: str) -> None:
        state = self.peers.pop(peer, None)
        if state is None:
            return
        state.session.close()
        for job_path, idx, _, _ in state.blocks.values():
            job = self.jobs.get(job_path)
            if job is not None:
                job.inflight.pop(idx, None)
                self._want(job)
        for job in self.jobs.values():
            if peer in job.sources:
                job.sources.remove(peer)
                self._check_stalled(job)
        for _, sources in self.queue.values():
            sources.discard(peer)

    def _close(self, peer: str, reason: str) -> None:
        if peer in self.peers:
            self._out.append(Send(peer, Goodbye(reason)))
            self._out.append(Close(peer, reason))
            self._forget_peer(peer)

    def _active(self) -> list[str]:
        return [p for p, s in self.peers.items() if s.session.active]

    def _send(self, peer: str, msg: Message) -> None:
        self._out.append(Send(peer, msg))

    def _request_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    # =========================================================== messages

    def _received(self, peer: str, msg: Message) -> None:
        state = self.peers.get(peer)
        if state is None:
            return  # closed meanwhile
        state.last_heard = self._now
        try:
            state.session.admit(msg)
            self._dispatch(peer, state, msg)
        except RemoteProtocolError as exc:
            self._notice("rejected", "", f"peer {peer}: {exc}")
            self._close(peer, str(exc))
        except UnsafePathError as exc:
            self.stats["rejected"] += 1
            self._notice("rejected", "", f"peer {peer} sent an unsafe record: {exc}")
            self._close(peer, f"unsafe path: {exc}")

    def _dispatch(self, peer: str, state: PeerState, msg: Message) -> None:
        match msg:
            case Hello():
                self._send_root(peer, state, force=True)
            case Goodbye():
                self._notice("applied", "", f"peer {peer} said goodbye: {msg.reason}")
                self._out.append(Close(peer, "peer said goodbye"))
                self._forget_peer(peer)
            case Ping(nonce):
                self._send(peer, Pong(nonce))
            case Pong():
                pass
            case Root():
                self._on_root(peer, state, msg)
            case NodeRequest():
                self._serve_nodes(peer, msg)
            case NodeReply():
                self._on_node_reply(peer, state, msg)
            case RangeRequest():
                state.serving.append((msg.request_id, msg.start, msg.end, msg.inline))
            case RecordRequest():
                got = (self.store.get(p) for p in msg.paths)
                found = [r for r in got if r is not None]
                self._serve_records(peer, state, msg.request_id, found, msg.inline)
            case Records():
                self._on_records(peer, state, msg)
            case BlockRequest():
                validate(msg.path)  # (a violation of this message, not of a later call)
                state.block_requests.append(msg)
            case BlockData():
                self._on_block(peer, state, msg.request_id, msg.data)
            case BlockMissing():
                self._on_block(peer, state, msg.request_id, None)
            case Collected():
                self._on_collected(msg)

    # ------------------------------------------------------ anti-entropy

    def _send_root(self, peer: str, state: PeerState, force: bool = False) -> None:
        root = self.store.merkle.root()
        if force or state.root_sent != root:
            state.root_sent = root
            self._send(peer, Root(root, len(self.store.merkle)))

    def _on_root(self, peer: str, state: PeerState, msg: Root) -> None:
        state.root = msg.root
        state.root_count = msg.count
        mine = self.store.merkle.root()
        if msg.root == mine:
            self.synced[peer] = self.store.last_sequence
        elif self.role != Role.SEND_ONLY and state.descent is None:
            if self.queue or self.jobs:
                # Every range still being applied would be fetched again by
                # a new descent: compare once the work has drained (_pump).
                # (A job nobody can serve is dropped after request_timeout.)
                state.descend_later = True
            else:
                self._descend(peer, state)
        self._send_root(peer, state)

    def _descend(self, peer: str, state: PeerState) -> None:
        state.descend_later = False
        state.descent = Descent(self.store.merkle)
        self._issue(peer, state, state.descent.start())

    def _issue(
        self,
        peer: str,
        state: PeerState,
        wants: tuple[list[tuple[int, str | None]], list[tuple[str | None, str | None]], list[str]],
    ) -> None:
        nodes, ranges, paths = wants
        # Content inline only while we hold less than half of what the peer
        # does (joining, an initial sync): a node that holds most of the data
        # rebuilds moved and renamed files from its own copies, which inline
        # content would bring over the wire again.
        joining = 2 * len(self.store.merkle) < state.root_count
        inline = INLINE_MAX if joining and INLINE_FEATURE in state.session.peer_features else 0
        for i in range(0, len(nodes), MAX_NODES_PER_REQUEST):  # (bounds each reply)
            rid = self._request_id()
            state.requests[rid] = self._now
            self._send(peer, NodeRequest(rid, tuple(nodes[i : i + MAX_NODES_PER_REQUEST])))
        for start, end in ranges:
            rid = self._request_id()
            state.requests[rid] = self._now
            # Content inline only where we hold nothing: a range we partly
            # have would bring back content we already hold.
            empty = inline and self.store.merkle.count_in_range(start, end) == 0
            self._send(peer, RangeRequest(rid, start, end, inline if empty else 0))
        for i in range(0, len(paths), 1024):
            rid = self._request_id()
            state.requests[rid] = self._now
            self._send(peer, RecordRequest(rid, tuple(paths[i : i + 1024]), inline))
        if not state.requests and state.descent is not None:
            state.descent = None

    def _serve_nodes(self, peer: str, msg: NodeRequest) -> None:
        merkle = self.store.merkle
        out = []
        for level, end in msg.nodes:
            node = merkle.node(level, end)
            if node is None:
                out.append(NodeChildren(level, end, None, False, ()))
                continue
            start, _ = merkle.range_of(level, end)
            children = merkle.children(level, end)
            # A single child covers the same keys: answer with the first level
            # that branches, saving the peer a round trip per degenerate level.
            while level > 1 and len(children) == 1:
                level -= 1
                children = merkle.children(level, end)
            kids = tuple(NodeSummary(c.end, c.hash, c.count) for c in children)
            out.append(NodeChildren(level, end, start, True, kids))
        self._send(peer, NodeReply(msg.request_id, tuple(out)))

    def _on_node_reply(self, peer: str, state: PeerState, msg: NodeReply) -> None:
        if state.requests.pop(msg.request_id, None) is None:
            return  # late (timed out) or duplicated reply: nothing waits for it
        if state.descent is None:
            return
        self._issue(peer, state, state.descent.on_reply(msg.nodes))

    def _serve_ranges(self) -> None:
        """Send up to SERVE_PER_CALL records (and SERVE_BYTES) of each peer's pending range replies.

        The byte cap matters with content inline: 2,048 records of 60 KiB
        files are 120 MiB, which one call would have queued at once - past
        the connection's limit for a peer that does not read (the node
        closed the channel to a peer that was reading, just slower).
        """
        for peer, state in self.peers.items():
            budget = SERVE_PER_CALL
            room = SERVE_BYTES
            while state.serving and budget > 0 and room > 0:
                rid, start, end, inline = state.serving[0]
                found = list(itertools.islice(self.store.in_range(start, end), budget + 1))
                more = len(found) > budget
                if more:
                    found = found[:budget]
                served, sent = self._serve_records(peer, state, rid, found, inline, room, not more)
                if served < len(found):
                    found, more = found[:served], True
                if more:
                    state.serving[0] = (rid, found[-1].path, end, inline)
                else:
                    state.serving.pop(0)
                budget -= len(found)
                room -= sent

    def _serve_records(
        self,
        peer: str,
        state: PeerState,
        request_id: int,
        records: Sequence[Record],
        inline: int = 0,
        room: int | None = None,
        done: bool = True,
    ) -> tuple[int, int]:
        """Send ``records`` as Records pages; (records served, bytes of content and records).

        With ``room``, stop after the page that uses it up: the first
        ``served`` records went out and the last page is not marked done (the
        caller sends the rest later). Without, all go out, but content inline
        only up to SERVE_BYTES (the peer requests the other blocks).
        """
        if INLINE_FEATURE not in state.session.peer_features:
            inline = 0
        inline = min(inline, INLINE_MAX)
        page: list[Record] = []
        contents: list[tuple[int, bytes]] = []
        size = total = served = content = 0
        content_cap = SERVE_BYTES if room is None else None  # (with room, room paces)
        for rec in records:
            served += 1
            if self._unpublished(rec):
                continue
            if inline and (content_cap is None or content < content_cap):
                data = self._content_of(rec, inline)
                if data is not None:
                    contents.append((len(page), data))
                    size += len(data)
                    content += len(data)
            page.append(rec)
            size += record_wire_size(rec)
            if len(page) >= RECORDS_PAGE or size >= PAGE_BYTES:
                total += size
                self._send(peer, Records(request_id, tuple(page), False, tuple(contents)))
                page, contents, size = [], [], 0
                if room is not None and total >= room and served < len(records):
                    return served, total
        total += size
        if page or done:
            self._send(peer, Records(request_id, tuple(page), done, tuple(contents)))
        return served, total

    def _content_of(self, rec: Record, limit: int) -> bytes | None:
        """The whole content of a one-block file up to ``limit`` bytes, verified."""
        if rec.type != EntryType.FILE or rec.deleted or len(rec.blocks) != 1 or rec.size > limit:
            return None
        block = rec.blocks[0]
        data = self.disk.read_block(rec.path, 0, block.size, rec)
        if data is None or len(data) != block.size or blake3.blake3(data).digest() != block.hash:
            return None  # changed under the index: the peer asks for the block (and we rescan)
        return data

    def _on_records(self, peer: str, state: PeerState, msg: Records) -> None:
        if msg.request_id and msg.request_id in state.requests and msg.done:
            del state.requests[msg.request_id]
            if not state.requests:
                state.descent = None
        for rec in msg.records:
            validate(rec.path)
            _check_vector(rec.path, rec.version)
            unsafe_link = not symlink_target_is_safe(rec.path, rec.target)
            if rec.type == EntryType.SYMLINK and not rec.deleted and unsafe_link:
                raise UnsafePathError(f"symlink {rec.path!r} points outside the folder")
        contents: dict[int, bytes] = {}
        for idx, data in msg.inline:
            rec = msg.records[idx]  # the codec checked the index
            ok = rec.type == EntryType.FILE and not rec.deleted and len(rec.blocks) == 1
            block = rec.blocks[0] if ok else None
            if block is None or len(data) != block.size:
                raise RemoteProtocolError(
                    f"inline content for {rec.path!r} does not fit its record"
                )
            if blake3.blake3(data).digest() != block.hash:
                self.stats["rejected"] += 1
                raise RemoteProtocolError(f"inline content for {rec.path!r} fails its hash")
            contents[idx] = data
        collected: list[tuple[str, VersionVector]] = []
        for idx, rec in enumerate(msg.records):
            forgotten = self._forgotten(rec.path)
            covered = forgotten is not None and forgotten.dominates(rec.version)
            if forgotten is not None and covered and self.store.get(rec.path) is None:
                # We collected this tombstone (or what it superseded): tell the
                # peer, so it collects it too instead of waiting forever for
                # our root to match its own.
                collected.append((rec.path, forgotten))
                continue
            self._merge(peer, rec, contents.get(idx))
        if collected:
            self._send(peer, Collected(tuple(collected)))

    # ------------------------------------------------------------ merging

    def _merge(self, peer: str, rec: Record, content: bytes | None = None) -> None:
        """Resolve one remote record against the local state and act on it.

        ``content``: the record's whole (one-block) content, received inline
        and verified; kept with the queued record for :meth:`_prepare`.
        """
        if self.role == Role.SEND_ONLY:
            return
        if rec.sequence or rec.fingerprint is not None:  # local facts never travel
            rec = with_local(rec, 0, None)
        local = self.store.get(rec.path)
        if local is not None and (
            len(local.version.entries) + len(rec.version.entries) > PLAUSIBLE_ACTORS
        ):
            _check_vector(rec.path, local.version.merge(rec.version))  # (what we would store)
        if local is None and self._forgotten_covers(rec):
            return
        if rec.path in self.jobs:
            job = self.jobs[rec.path]
            if job.target.content_hash == rec.content_hash and peer not in job.sources:
                job.sources.append(peer)
                job.stalled_since = None
                self._want(job)
            if job.target.version.dominates(rec.version):
                return
            if not rec.version.dominates(job.target.version):
                # Concurrent with what the job installs: resolve it once the
                # job is done (the install may conflict with it).
                self.retry[rec.path] = (self._now + self.timing.retry_delay, rec, peer)
                return
            # The job fetches a version this record supersedes: nothing of it
            # is installed yet, and it may never finish (its sources moved
            # on, and answer that they no longer have its blocks). Drop it and
            # take this record now, rather than wait for the job to give up.
            self._abandon(job)
            if (
                job.target.type == EntryType.FILE
                and rec.content_hash != job.target.content_hash  # (else the next job uses it)
                and all(j.key != job.key for j in self.jobs.values())
            ):
                with contextlib.suppress(DiskFailure):
                    self.disk.temp_discard(job.key)  # (its content is history)
            if job.remote.path != rec.path:
                # A conflict copy's job: the record it resolved is resolved
                # again (the winner it would have stored is not stored).
                self.retry[job.remote.path] = (self._now, job.remote, job.origin_peer)
        queued = self.queue.get(rec.path)
        if queued is not None:
            qrec, sources = queued
            if qrec.version.dominates(rec.version):
                if qrec.content_hash == rec.content_hash:
                    sources.add(peer)
                return
        res = self._resolve(local, rec)
        if res.outcome == Outcome.KEEP:
            return
        assert res.result is not None
        if res.outcome == Outcome.MERGE:
            keep_fp = local.fingerprint if local is not None else None
            self._store([replace(res.result, fingerprint=keep_fp)], peer)
            return
        if res.outcome == Outcome.TAKE and res.result.deleted:
            if local is None or local.deleted:
                self._store([res.result], peer)
            else:
                self.deletes[rec.path] = (res.result, peer)
            return
        self.queue[rec.path] = (rec, {peer})
        self._hold(rec, content)
        self.deletes.pop(rec.path, None)

    def _hold(self, rec: Record, content: bytes | None) -> None:
        """Keep inline ``content`` for queued ``rec`` (or drop what an older one had)."""
        old = self._inline.pop(rec.path, None)
        if old is not None:
            self._inline_bytes -= len(old[1])
        if content is not None and self._inline_bytes + len(content) <= INLINE_HELD:
            self._inline[rec.path] = (rec.blocks[0].hash, content)
            self._inline_bytes += len(content)

    def _take_held(self, path: str) -> tuple[bytes, bytes] | None:
        held = self._inline.pop(path, None)
        if held is not None:
            self._inline_bytes -= len(held[1])
        return held

    def _unpublished(self, rec: Record) -> bool:
        """A receive-only node's own edits (and their copies) never leave it."""
        return self.role == Role.RECEIVE_ONLY and rec.origin == self.store.actor

    def _resolve(self, local: Record | None, rec: Record) -> Resolution:
        """:func:`resolve`, except that on a receive-only node the mesh wins.

        A local edit there is kept until the mesh changes the path; then the
        mesh's record is taken as it is and the edit stays beside it as an
        (unpublished) conflict copy.
        """
        res = resolve(local, rec)
        if local is None or not self._unpublished(local) or res.outcome == Outcome.KEEP:
            return res
        if res.outcome == Outcome.TAKE and res.result is rec:
            return res
        if rec.version.compare(local.version) == Order.BEFORE:
            return Resolution(Outcome.KEEP)
        if local.deleted or local.same_content(rec):
            return Resolution(Outcome.TAKE, rec)
        return Resolution(Outcome.CONFLICT, rec, local, loser_is_local=True)

    def _forgotten_covers(self, rec: Record) -> bool:
        forgotten = self._forgotten(rec.path)
        return forgotten is not None and forgotten.dominates(rec.version)

    def _forgotten(self, path: str) -> VersionVector | None:
        if not self._any_forgotten:
            return None
        return forgotten(self.store, path)

    def _on_collected(self, msg: Collected) -> None:
        """A member collected these tombstones, so every member held them: so may we."""
        doomed: list[str] = []
        for path, vector in msg.entries:
            validate(path)
            _check_vector(path, vector)
            local = self.store.get(path)
            if local is not None and local.deleted and vector.dominates(local.version):
                self._mark_forgotten(path, vector)
                doomed.append(path)
        if doomed:
            self.store.forget(doomed)
            self._notice("collected", "", f"{len(doomed)} tombstones collected by a peer")

    # ------------------------------------------------------------- jobs

    def _pump(self) -> None:
        """Install what is complete, start queued work, request blocks, run deletions."""
        while True:
            if self._key_waiting:
                self._release_waiting()
            if self._repairs:
                self._start_repairs()
            # Records whose content came inline first, job slots or not: they
            # complete at once, and waiting behind block transfers would only
            # keep their content in memory (or drop it, to be sent again).
            # The paths are taken in one pass: a dict's first key is found by
            # skipping every slot freed before it, so taking the first key once
            # per start would cost time quadratic in the queue's length
            # (starting never queues anything). _starts may pass the cap: an
            # ancestor is started with its child.
            # Nothing starts while the disk is behind (every flush slot taken
            # and a batch's worth waiting): the finished jobs would pile up
            # (and the records with them) instead of waiting in the queue,
            # where the driver's flow control sees them.
            budget = max(STARTS_PER_CALL - self._starts, 0)
            for path in list(itertools.islice(self._inline, budget)):
                if self._starts >= STARTS_PER_CALL or self._disk_behind():
                    break
                if path in self._inline:  # (not started as an ancestor meanwhile)
                    self._start_queued(path)
            room = min(MAX_ACTIVE_JOBS - len(self.jobs), STARTS_PER_CALL - self._starts)
            for path in list(itertools.islice(self.queue, max(room, 0))):
                if len(self.jobs) >= MAX_ACTIVE_JOBS or self._starts >= STARTS_PER_CALL:
                    break
                if self._disk_behind():
                    break
                self._starts += 1
                rec, sources = self.queue.pop(path)
                self._start(rec, sources, self._take_held(path))
            self._request_blocks()
            # Installing frees job slots: start more, and go round again.
            installed = self._install_flushed()
            if self._ready and self._install_due() and len(self._flushing) < FLUSHES_IN_FLIGHT:
                self._begin_flush()
                installed += self._install_flushed()  # (a disk that flushes at once)
            if not installed:
                break
        if not self.jobs and not self.queue and self.deletes:
            self._run_deletes()
        if not self.queue and not self.jobs:
            mine = self.store.merkle.root()
            for peer, state in self.peers.items():
                if state.descend_later and state.descent is None and state.session.active:
                    if state.root is not None and state.root != mine:
                        self._descend(peer, state)
                    else:
                        state.descend_later = False
        idle = not self.jobs and not self.queue and not self.deletes
        pulling = any(state.descent is not None for state in self.peers.values())
        if self._changed and idle and not pulling and self.timing.eager_push:
            # Work drained: tell every peer our new root, so "in sync" is known
            # now rather than at the next anti-entropy round (eager, like pushes).
            # Not while a pull is still bringing records: each root would only
            # send the peer down our half-filled tree.
            self._changed = False
            for peer in self._active():
                self._send_root(peer, self.peers[peer])

    def _start_queued(self, path: str) -> None:
        """Start queued ``path`` now, after any of its ancestors still queued.

        (A directory installed after a file in it would find itself already
        made by that install, not what the plan expected.)
        """
        up = parent(path)
        if up and up in self.queue:
            self._start_queued(up)
        entry = self.queue.pop(path, None)
        if entry is not None:
            self._starts += 1
            self._start(entry[0], entry[1], self._take_held(path))

    def _start(
        self, rec: Record, sources: set[str], held: tuple[bytes, bytes] | None = None
    ) -> None:
        local = self.store.get(rec.path)
        res = self._resolve(local, rec)
        if res.outcome == Outcome.KEEP:
            return
        assert res.result is not None
        origin = next(iter(sorted(sources)), "")
        if res.outcome == Outcome.MERGE:
            self._store(
                [replace(res.result, fingerprint=local.fingerprint if local else None)], origin
            )
            return
        if res.outcome == Outcome.TAKE:
            if res.result.deleted:
                self.deletes[rec.path] = (res.result, origin)
                return
            job = Job(
                res.result, expectation(local), rec, local, sorted(sources), origin_peer=origin
            )
        else:  # CONFLICT
            assert res.loser is not None
            self.stats["conflicts"] += 1
            copy = self._free_copy(res.loser)
            try:
                validate(copy.path)
            except UnsafePathError:
                self._notice("error", rec.path, "conflict copy name is not a valid path")
                return
            self._notice("conflict", rec.path, f"kept the other version as {copy.path}")
            if res.loser_is_local:
                job = Job(
                    res.result,
                    expectation(local),
                    rec,
                    local,
                    sorted(sources),
                    move_local_to=copy.path,
                    extra=[copy],
                    origin_peer=origin,
                )
            else:
                existing = self.store.get(copy.path)
                winner = replace(res.result, fingerprint=local.fingerprint if local else None)
                if existing is not None and existing.same_content(copy) and not existing.deleted:
                    self._store([winner], origin)
                    return
                job = Job(
                    copy,
                    expectation(existing),
                    rec,
                    local,
                    sorted(sources),
                    extra=[winner],
                    origin_peer=origin,
                )
        self._prepare(job, local, held)

    def _free_copy(self, loser: Record) -> Record:
        """``loser``'s conflict copy at the first of its names not holding
        other content: a copy never replaces another file (the same bytes
        losing again in a later version had the same name, and replaced the
        user's edits of the first copy)."""
        for n in range(1, 100):
            copy = conflict_copy(loser, n)
            there = self.store.get(copy.path)
            if there is None or there.deleted or there.same_content(copy):
                return copy
        return copy  # (99 taken: the last; its install then refuses to replace)

    def _key_busy(self, key: str) -> bool:
        """Is a job assembling content ``key`` (in its temp) now?"""
        path = self._key_owner.get(key)
        if path is None:
            return False
        owner = self.jobs.get(path)
        if owner is not None and owner.key == key:
            return True
        del self._key_owner[key]
        return False

    def _release_waiting(self) -> None:
        """Prepare the jobs whose content's temp is free again."""
        for key in list(self._key_waiting):
            if self._key_busy(key):
                continue
            for job, local, held in self._key_waiting.pop(key):
                if job.target.path not in self.jobs:  # (nothing took its path meanwhile)
                    self._prepare(job, local, held)  # the first one owns the temp again

    def _prepare(
        self, job: Job, local: Record | None, held: tuple[bytes, bytes] | None = None
    ) -> None:
        target = job.target
        if target.type == EntryType.FILE and not target.deleted and target.size:
            # The same content at two paths at once (copies, a file and its
            # backup) would be assembled in one temp: the first install moves
            # it away and the second found nothing (and installed zeros).
            if self._key_busy(job.key):
                self._key_waiting.setdefault(job.key, []).append((job, local, held))
                return
            owners = self._key_owner
            owners[job.key] = target.path
            if len(owners) > 2 * len(self.jobs) + KEY_OWNERS_SLACK:
                # Entries outlive their jobs (checked when looked up): keep
                # only the live ones, or a long-running node keeps one per
                # content it ever fetched.
                live = {j.key: p for p, j in self.jobs.items()}
                live[job.key] = target.path
                self._key_owner = live
        if target.type == EntryType.FILE and not target.deleted:
            # Optional Disk hook (sealed_disk.py): which record a temp assembles.
            will_install = getattr(self.disk, "will_install", None)
            if will_install is not None:
                will_install(target)
            if held is not None and len(target.blocks) == 1 and target.blocks[0].hash == held[0]:
                # The content came inline with the record, verified on arrival.
                if not self._temp_write(job, 0, held[1]):
                    return
                self.stats["blocks_inline"] += 1
                self._ready_job(job)
                return
        if target.type != EntryType.FILE or not target.blocks:
            if target.type == EntryType.FILE and not self._temp_write(job, 0, b""):
                return  # (an empty file)
            self._ready_job(job)
            return
        present = self.disk.temp_present(job.key, target.blocks)
        reuse = _local_sources(self.store, local, target)
        for idx, block in enumerate(target.blocks):
            if idx in present:
                continue
            data = None
            for src_path, src_offset in reuse.get(block.hash, ()):
                data = self.disk.read_block(src_path, src_offset, block.size)
                if data is not None and blake3.blake3(data).digest() == block.hash:
                    break
                data = None
            if data is not None:
                if not self._temp_write(job, block.offset, data):
                    return
                self.stats["blocks_local"] += 1
            else:
                job.missing[idx] = block
        if not job.missing:
            self._ready_job(job)
            return
        self.jobs[target.path] = job
        self._want(job)
        self._check_stalled(job)

    def _temp_write(self, job: Job, offset: int, data: bytes) -> bool:
        """Write to ``job``'s temp; on a disk failure (full, read-only...) drop
        the job, keep nothing of it, and try the path again later."""
        try:
            self.disk.temp_write(job.key, offset, data)
        except DiskFailure as exc:
            path = job.target.path
            self._notice("error", path, f"{exc}; trying again later")
            if self.jobs.get(path) is job:
                del self.jobs[path]
            self._wanting.pop(path, None)
            with contextlib.suppress(DiskFailure):
                self.disk.temp_discard(job.key)  # give back the space
            self.retry[job.remote.path] = (
                self._now + 30 * self.timing.retry_delay,
                job.remote,
                job.origin_peer,
            )
            return False
        return True

    def _want(self, job: Job) -> None:
        """``job`` may have blocks to request (see :meth:`_request_blocks`)."""
        self._wanting[job.target.path] = None

    def _check_stalled(self, job: Job) -> None:
        """A job still missing blocks and nobody left to ask: note since when."""
        if job.missing and not job.sources and not job.inflight and job.stalled_since is None:
            job.stalled_since = self._now

    def _ready_job(self, job: Job) -> None:
        """Everything for ``job`` is at hand: install it with its batch."""
        self.jobs[job.target.path] = job  # a record arriving meanwhile joins it
        self._add_ready(job)

    def _add_ready(self, job: Job) -> None:
        if not self._ready:
            self._ready_since = self._now
        self._ready.append(job)

    def _install_due(self) -> bool:
        """Install the completed jobs now, or let more join them?

        Each install batch costs two flushes of the disk, so in a bulk
        transfer completed files wait for company - up to READY_FILES files,
        READY_BYTES bytes or READY_DELAY seconds. When nothing more is on
        its way (no block requested from anyone, no record queued), they go at
        once: a single change is never held back.
        """
        if len(self._ready) >= READY_FILES:
            return True
        if self._now >= self._ready_since + READY_DELAY:  # the very sum next_deadline() gives
            return True
        if sum(j.target.size for j in self._ready) >= READY_BYTES:
            return True
        # More is on its way while blocks are requested or records queued.
        return not self.queue and not any(state.blocks for state in self.peers.values())

    def _disk_behind(self) -> bool:
        """Every flush slot is taken and a whole batch waits for one."""
        return len(self._flushing) >= FLUSHES_IN_FLIGHT and len(self._ready) >= READY_FILES

    def _begin_flush(self) -> None:
        """Start making the completed jobs' temps durable, as one batch."""
        batch, self._ready = self._ready, []
        batch = [j for j in batch if self.jobs.get(j.target.path) is j]
        files = [j.key for j in batch if j.target.type == EntryType.FILE]
        self._flushing.append((self.disk.begin_sync_temps(files), batch))

    def _install_flushed(self) -> int:
        """Install the batches whose flush is done (see :meth:`handle_many`),
        oldest first; how many."""
        installed = 0
        while self._flushing:
            ticket, batch = self._flushing[0]
            try:
                if not self.disk.temps_synced(ticket):
                    break
                failure = None
            except DiskFailure as exc:
                failure = exc
            self._flushing.popleft()
            installed += 1
            # (A job dropped meanwhile - superseded, abandoned - is skipped.)
            batch = [j for j in batch if self.jobs.get(j.target.path) is j]
            for job in batch:
                del self.jobs[job.target.path]
            if failure is not None:
                # Nothing is installed that is not durable, and the temps are
                # not trusted again: after a failed writeback the page cache
                # can still hold their bytes (read back, they verify) while
                # the disk does not, and a second flush writes nothing - the
                # kernel reports such an error once. Their content is fetched
                # again (one owner per temp: the batch's jobs are done).
                self._notice("error", "", f"{failure}; {len(batch)} file(s) tried again later")
                for job in batch:
                    self.retry[job.remote.path] = (
                        self._now + 30 * self.timing.retry_delay,
                        job.remote,
                        job.origin_peer,
                    )
                for job in batch:
                    if job.target.type == EntryType.FILE:
                        with contextlib.suppress(DiskFailure):  # (a disk gone read-only)
                            self.disk.temp_discard(job.key)
                continue
            # The installed records are stored together, in one write.
            self._deferred = []
            try:
                for job in batch:
                    self._finish(job)
                self._store_deferred()
            finally:  # (an exception ends the whole index batch: nothing to keep)
                self._deferred = None
                self._deferred_paths.clear()
        return installed

    def _request_blocks(self) -> None:
        """Fill each peer's window with requests for blocks of waiting jobs.

        Only jobs in ``_wanting`` are visited (those with blocks not yet
        requested); a job leaves it once every missing block is in flight and
        comes back when a request fails, so a full transfer costs O(blocks),
        not O(jobs) per arriving block.
        """
        if not self._wanting:
            return
        window = self.timing.block_window
        for peer, state in self.peers.items():
            if not state.session.active:
                continue
            free = window - len(state.blocks)
            room = WINDOW_BYTES - state.inflight_bytes
            if free <= 0 or room <= 0:
                continue
            for path in list(self._wanting):
                job = self.jobs.get(path)
                if job is None or len(job.inflight) >= len(job.missing):
                    del self._wanting[path]  # nothing (more) to ask for
                    continue
                if peer not in job.sources:
                    continue
                for idx, block in job.missing.items():
                    if free <= 0 or room <= 0:
                        break
                    if idx in job.inflight:
                        continue
                    rid = self._request_id()
                    job.inflight[idx] = rid
                    state.blocks[rid] = (job.target.path, idx, self._now, block.size)
                    state.inflight_bytes += block.size
                    room -= block.size
                    self._send(
                        peer,
                        BlockRequest(
                            rid,
                            job.remote.path,
                            job.target.content_hash,
                            block.offset,
                            block.size,
                            block.hash,
                        ),
                    )
                    free -= 1
                if free <= 0 or room <= 0:
                    break

    def _on_block(self, peer: str, state: PeerState, rid: int, data: bytes | None) -> None:
        entry = state.blocks.pop(rid, None)
        if entry is None:
            return  # late (timed out) or duplicated: the block is requested again anyway
        path, idx, _, size = entry
        state.inflight_bytes -= size
        job = self.jobs.get(path)
        if job is None or job.inflight.get(idx) != rid:
            return  # job finished or was dropped meanwhile
        del job.inflight[idx]
        block = job.missing[idx]
        if data is None:
            if peer in job.sources:
                job.sources.remove(peer)
            if not job.sources and not job.inflight:
                # Every source said it no longer has this content (it changed
                # or went since it told us): nothing will finish the job. Drop
                # it now - its newer state comes with its record - rather than
                # hold deletions and descents for request_timeout. (A source
                # that went away instead leaves the job waiting for it.)
                self._abandon(job)
                if job.repair:
                    self._unrepaired(job)
                elif job.remote.path != job.target.path:
                    # A conflict copy's job: resolve its record again.
                    self.retry[job.remote.path] = (self._now, job.remote, job.origin_peer)
                return
            self._want(job)
            self._check_stalled(job)
            return
        if len(data) != block.size or blake3.blake3(data).digest() != block.hash:
            self._want(job)
            self.stats["rejected"] += 1
            self._notice("rejected", path, f"peer {peer} sent a block that fails its hash")
            self._close(peer, "block does not match its hash")
            return
        if not self._temp_write(job, block.offset, data):
            return
        self.stats["blocks_remote"] += 1
        del job.missing[idx]
        if not job.missing and not job.inflight:
            self._add_ready(job)

    def _finish(self, job: Job) -> None:
        """Install a job's result on disk, then store and announce it."""
        target = job.target
        path = target.path
        expect = job.expect
        extra = list(job.extra)
        if self._deferred_paths and (
            path in self._deferred_paths
            or job.remote.path in self._deferred_paths
            or any(r.path in self._deferred_paths for r in extra)
        ):
            self._store_deferred()  # what this job reads must be stored first
        if not _same_state(self.store.get(job.remote.path), job.local):
            # The index changed while we fetched (a scan, another job): the plan
            # is stale. Resolve the received record again against the new state.
            self.retry[job.remote.path] = (self._now, job.remote, job.origin_peer)
            return
        if target.type == EntryType.FILE and not target.deleted:
            # Optional Disk hook (sealed_disk.py): said again right before the
            # install - what a temp holds must never be decided by a memory
            # of plans that may have dropped this one while the job waited.
            will_install = getattr(self.disk, "will_install", None)
            if will_install is not None:
                will_install(target)
        try:
            if job.repair and expect is not None:
                # What the repair replaces was judged damaged by its metadata
                # alone: keep it (out of sync's sight) in case it was an edit.
                where, expect = self.disk.keep_copy(path, expect)
                self._notice("damaged", path, f"the replaced bytes are kept as {where}")
            if job.move_local_to is not None and expect is not None:
                # A sealed object must authenticate before the local file moves.
                verify = getattr(self.disk, "verify_temp", None)
                if verify is not None:
                    verify(job.key)
                moved = self.disk.move(path, job.move_local_to, expect)
                extra = [
                    replace(r, fingerprint=moved.fingerprint) if r.path == job.move_local_to else r
                    for r in extra
                ]
                expect = None
            if target.type == EntryType.DIRECTORY:
                obs = self.disk.install_dir(path, expect)
            elif target.type == EntryType.SYMLINK:
                obs = self.disk.install_symlink(path, target.target, expect)
            else:
                obs = self.disk.install_file(path, job.key, target.size, target.mode, expect)
        except LocalChanged as exc:
            self._store_deferred()  # resolving reads other paths
            if self._structural_conflict(job, exc) or self._gives_way(job, exc):
                return
            self._notice("kept", path, f"changed locally meanwhile; rescanning ({exc})")
            # Resolve the *received* record again, not the job's target: a
            # conflict's target is the winner with the loser's version merged
            # in, which would replace the local loser without a copy.
            self.retry[job.remote.path] = (
                self._now + self.timing.retry_delay,
                job.remote,
                job.origin_peer,
            )
            self._out.append(Rescan((path,)))
            return
        except Tampered as exc:
            self._store_deferred()
            self._tampered(job, str(exc))
            return
        except DiskFailure as exc:
            self._notice("error", path, str(exc))
            self.retry[job.remote.path] = (  # (the received record: see above)
                self._now + 30 * self.timing.retry_delay,
                job.remote,
                job.origin_peer,
            )
            return
        self.stats["applied"] += 1
        if job.repair:
            self.stats["repaired"] += 1
            self._notice("repaired", path, "restored its recorded content")
        records = [with_local(target, target.sequence, obs.fingerprint), *extra]
        if self._deferred is None:
            self._store(records, job.origin_peer)
        else:
            self._deferred.append((records, job.origin_peer))
            self._deferred_paths.update(r.path for r in records)

    def _store_deferred(self) -> None:
        """Store what the running install batch has deferred, in order, at once."""
        if not self._deferred:
            return
        items, self._deferred = self._deferred, []
        self._deferred_paths.clear()
        stored = self.store.put([r for records, _ in items for r in records])
        at = 0
        for records, origin in items:
            self._stored(stored[at : at + len(records)], origin)
            at += len(records)

    def _tampered(self, job: Job, detail: str) -> None:
        """A sealed object failed authentication (only a key-holder can tell).

        Nobody with the key made it, so nothing was written and it must not
        stand: the local state is re-issued with a version superseding the
        forgery, which every node then takes (nodes without the key too).
        """
        self.stats["rejected"] += 1
        path = job.remote.path
        self._notice("tampered", path, f"{detail}; kept the local version")
        local = self.store.get(path)
        base = job.target.version.merge(job.remote.version)
        if local is not None:
            base = base.merge(local.version)
        if local is None or local.deleted:
            gone = Record(
                path=path,
                type=EntryType.FILE,
                size=0,
                mode=local.mode if local else 0,
                content_hash=EMPTY_HASH,
                version=base.bump(self.store.actor),
                deleted=True,
                origin=self.store.actor,
            )
            gone = replace(gone, origin_sum=gone.version.total())
            self._store([gone], "")
            return
        restored = replace(
            local,
            version=base.bump(self.store.actor),
            origin=self.store.actor,
            sequence=0,
        )
        restored = replace(restored, origin_sum=restored.version.total())
        self._store([restored], "")

    def _run_deletes(self) -> None:
        # Children before parents, so directories are empty when their turn comes.
        for path in sorted(self.deletes, reverse=True):
            rec, origin = self.deletes.pop(path)
            local = self.store.get(path)
            res = self._resolve(local, rec)
            if res.outcome == Outcome.KEEP or res.result is None:
                continue
            if res.outcome == Outcome.MERGE and local is not None:
                # (the file stays as it is: keep its fingerprint, or every
                # checked operation on it would fail until a full scan)
                self._store([replace(res.result, fingerprint=local.fingerprint)], origin)
                continue
            if local is None or local.deleted:
                self._store([res.result], origin)
                continue
            try:
                self.disk.remove(path, expectation(local))
            except NotEmpty:
                if self._attempt(path) <= PATIENCE:
                    self.retry[path] = (self._now + self.timing.retry_delay, rec, origin)
                    continue
                # Something we must not delete is still inside: the directory
                # stays, with a version that supersedes the deletion.
                kept = mint(
                    path,
                    EntryType.DIRECTORY,
                    local,
                    self.store.actor,
                    mode=local.mode,
                    base=local.version.merge(rec.version),
                )
                self._notice("kept", path, "directory not empty; kept")
                self._store([kept], "")
                continue
            except LocalChanged:
                self._notice("kept", path, "changed locally before deletion; rescanning")
                self._out.append(Rescan((path,)))
                continue
            except DiskFailure as exc:
                self._notice("error", path, str(exc))
                continue
            self.stats["applied"] += 1
            self._store([res.result], origin)

    # ----------------------------------------------- structural conflicts

    def _attempt(self, path: str) -> int:
        self.attempts[path] = self.attempts.get(path, 0) + 1
        return self.attempts[path]

    def _structural_conflict(self, job: Job, exc: LocalChanged) -> bool:
        """Resolve a file-versus-directory clash between paths, deterministically.

        The rule: live entries below a path make it a directory. A file (or
        symlink) in the way is kept as its conflict copy, on every node that
        meets the clash, and the directory gets a version superseding it.
        """
        target = job.target
        path = target.path
        if isinstance(exc, ParentNotDirectory) and not target.deleted:
            blocker = self._file_ancestor(path)
            if blocker is None or self._attempt(path) <= PATIENCE:
                return False
            self._demote(blocker)
            self.retry[path] = (self._now, target, job.origin_peer)
            return True
        if (
            isinstance(exc, NotEmpty)
            and target.type != EntryType.DIRECTORY
            and job.move_local_to is None
        ):
            local = self.store.get(path)
            if local is None or local.deleted or local.type != EntryType.DIRECTORY:
                return False
            if self._attempt(path) <= PATIENCE:
                return False
            copy = self._free_copy(target)
            try:
                validate(copy.path)
                expect = expectation(self.store.get(copy.path))
                if target.type == EntryType.SYMLINK:
                    obs = self.disk.install_symlink(copy.path, target.target, expect)
                else:
                    obs = self.disk.install_file(
                        copy.path, job.key, target.size, target.mode, expect
                    )
            except (LocalChanged, DiskFailure, UnsafePathError):
                return False
            kept = mint(
                path,
                EntryType.DIRECTORY,
                local,
                self.store.actor,
                mode=local.mode,
                base=local.version.merge(target.version),
            )
            self.stats["conflicts"] += 1
            self._notice("conflict", path, f"a directory stays here; the file is {copy.path}")
            self._store([replace(copy, fingerprint=obs.fingerprint), kept], "")
            return True
        return False

    def _gives_way(self, job: Job, exc: LocalChanged) -> bool:
        """On a node without the secure key, its own file at a protected path
        makes way for the mesh's sealed version, and is kept.

        Its scans cannot record that file (publishing it would publish a
        protected file's plaintext: protocol section 9), so the index does not
        know it and the install, expecting nothing there, failed at every
        retry, for ever (found by review). Once a rescan has confirmed it
        (PATIENCE attempts), the file is kept where its owner finds it
        (``Disk.keep_copy``: the node's state directory, never synced;
        numbered copies, ``<path>.<n>``, never one over another) and the
        mesh's version is installed over it. A file
        that already is the mesh's version (an index lost or restored) is
        recorded as it is. Nodes with the key are left alone: their scans
        record such a file, and the conflict rule keeps it. The same for such a
        file where the path needs a directory (``keys/sub`` in the way of
        ``keys/sub/x``): kept, then removed. True when handled.
        """
        target = job.target
        path = target.path
        if not target.sealed or target.deleted or target.type != EntryType.FILE:
            return False
        if getattr(self.disk, "will_install", None) is not None:
            return False  # (the sealed disk's hook: this node holds the key)
        if job.move_local_to is not None or job.repair or job.remote.path != path:
            return False
        blocked = path
        if isinstance(exc, ParentNotDirectory):
            ancestor = self._file_on_disk_above(path)
            if ancestor is None:
                return False
            blocked = ancestor
        local = self.store.get(blocked)
        if local is not None and not local.deleted:
            return False  # the index knows what is there
        if self._attempt(path) <= PATIENCE:
            return False  # (rescanned first: a scan may yet record it)
        if blocked != path:
            return self._ancestor_gives_way(job, blocked)
        try:
            there = self.disk.observe(path)
            if not _regular_file(there):
                return False  # (a FIFO would block the copy's read for ever)
            assert there is not None and there.fingerprint is not None
            if self._holds(path, target, there):
                self._store(
                    [with_local(target, target.sequence, there.fingerprint)], job.origin_peer
                )
                with contextlib.suppress(DiskFailure):
                    self.disk.temp_discard(job.key)  # (not needed: the file is it)
                return True
            there = self._keep_in_way(path, there, "the mesh's version")
            if there is None:
                return False
            obs = self.disk.install_file(path, job.key, target.size, target.mode, there)
        except (LocalChanged, UnsafePathError):
            return False  # (changed again meanwhile: the next attempt)
        except (DiskFailure, OSError) as exc:
            self._notice("error", path, str(exc))
            self.retry[path] = (
                self._now + 30 * self.timing.retry_delay,
                job.remote,
                job.origin_peer,
            )
            return True
        self._kept_in_way.pop(path, None)
        self.stats["applied"] += 1
        records = [with_local(target, target.sequence, obs.fingerprint), *job.extra]
        self._store(records, job.origin_peer)
        return True

    def _file_on_disk_above(self, path: str) -> str | None:
        """The highest ancestor of ``path`` that is a regular file on disk."""
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            try:
                there = self.disk.observe("/".join(parts[:i]))
            except (LocalChanged, DiskFailure, UnsafePathError, OSError):
                return None  # (the next attempt)
            if there is None:
                return None
            if there.type != EntryType.DIRECTORY:
                # (a symlink is recorded by any scan: a structural conflict)
                return "/".join(parts[:i]) if _regular_file(there) else None
        return None

    def _ancestor_gives_way(self, job: Job, blocked: str) -> bool:
        """:meth:`_gives_way` for a file where ``job`` needs a directory."""
        try:
            there = self.disk.observe(blocked)
            if not _regular_file(there):
                return False
            assert there is not None
            there = self._keep_in_way(blocked, there, job.target.path)
            if there is None:
                return False
            self.disk.remove(blocked, there)
        except (LocalChanged, UnsafePathError):
            return False
        except (DiskFailure, OSError) as exc:
            self._notice("error", blocked, str(exc))
            later = self._now + 30 * self.timing.retry_delay
            self.retry[job.remote.path] = (later, job.remote, job.origin_peer)
            return True
        self._kept_in_way.pop(blocked, None)
        self.retry[job.remote.path] = (self._now, job.remote, job.origin_peer)
        return True

    def _keep_in_way(self, path: str, there: Observation, what: str) -> Observation | None:
        """Keep the file at ``path`` (a new numbered copy, never over another)
        unless this very file was kept already; what stands there now, or
        None if it is no longer a file. Raises what ``Disk.keep_copy`` raises."""
        if self._kept_in_way.get(path) == there.fingerprint:
            return there
        where, now = self.disk.keep_copy(path, there)
        if now is None or now.fingerprint is None:
            return None
        self._kept_in_way[path] = now.fingerprint
        self._notice(
            "kept",
            path,
            "protected by .secure and made here without the secure key (not synced):"
            f" this node's file is kept as {where}, to make way for {what}",
        )
        return now

    def _holds(self, path: str, target: Record, there: Observation) -> bool:
        """The file at ``path`` already is ``target``'s content (checked block by block)."""
        if there.fingerprint is None or there.fingerprint.size != target.size:
            return False
        for block in target.blocks:
            data = self.disk.read_block(path, block.offset, block.size)
            if data is None or blake3.blake3(data).digest() != block.hash:
                return False
        return True

    def _file_ancestor(self, path: str) -> Record | None:
        head = parent(path)
        while head:
            rec = self.store.get(head)
            if rec is not None and not rec.deleted and rec.type != EntryType.DIRECTORY:
                return rec
            head = parent(head)
        return None

    def _demote(self, rec: Record) -> None:
        """Keep file ``rec`` as its conflict copy and make its path a directory."""
        copy = self._free_copy(rec)
        try:
            validate(copy.path)
            moved = self.disk.move(rec.path, copy.path, expectation(rec))
            self.disk.install_dir(rec.path, None)
        except (LocalChanged, DiskFailure, UnsafePathError) as exc:
            self._notice("kept", rec.path, f"cannot make it a directory yet ({exc})")
            self._out.append(Rescan((rec.path,)))
            return
        kept = mint(rec.path, EntryType.DIRECTORY, rec, self.store.actor, mode=0o755)
        self.stats["conflicts"] += 1
        self._notice("conflict", rec.path, f"entries below need a directory; file is {copy.path}")
        self._store([replace(copy, fingerprint=moved.fingerprint), kept], "")

    def _store(self, records: list[Record], origin_peer: str) -> None:
        self._stored(self.store.put(records), origin_peer)

    def _stored(self, stored: list[Record], origin_peer: str) -> None:
        """What follows every write of records: bookkeeping, notices, pushes."""
        self._changed = True
        self._batch_stored.extend(stored)
        kept = self._kept_in_way
        for rec in stored:
            self.retry.pop(rec.path, None)
            self.attempts.pop(rec.path, None)
            if kept:
                kept.pop(rec.path, None)  # (a new state there: a file in the way is kept anew)
            self._notice("applied", rec.path, "deleted" if rec.deleted else "")
        self._announce(stored, exclude=origin_peer)

    def _announce(self, records: list[Record], exclude: str = "") -> None:
        """Push ``records`` to every peer but ``exclude``, when the batch ends.

        Never with content inline: a pushed file may be a moved one, which
        the peer rebuilds from its own copy.
        """
        # (Only if some peer would get them: a node joining from its only
        # peer would queue every record it applies for nobody. A peer that
        # connects later reconciles in full anyway.)
        if self.timing.eager_push and any(
            p != exclude and s.session.active for p, s in self.peers.items()
        ):
            # (A receive-only node's own records - its edits, their conflict
            # copies, a repaired copy of one - never leave it.)
            self._outbox.extend((rec, exclude) for rec in records if not self._unpublished(rec))

    def _flush_announcements(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        for peer in self._active():
            page: list[Record] = []
            size = 0
            for rec, exclude in outbox:
                if exclude == peer:
                    continue
                page.append(rec)
                size += record_wire_size(rec)
                if len(page) >= RECORDS_PAGE or size >= PAGE_BYTES:
                    self._send(peer, Records(0, tuple(page), True))
                    page, size = [], 0
            if page:
                self._send(peer, Records(0, tuple(page), True))

    # --------------------------------------------------------- serving

    def _serve_blocks(self) -> None:
        """Answer each peer's queued block requests, about SERVE_BYTES per call."""
        for peer, state in self.peers.items():
            room = SERVE_BYTES
            queue = state.block_requests
            while queue and room > 0:
                msg = queue.popleft()
                room -= max(msg.size, 4096)  # (an empty request costs a read and a reply too)
                self._serve_block(peer, msg)

    def _serve_block(self, peer: str, msg: BlockRequest) -> None:
        # The block hash decides, so try the named file first without touching
        # the index (decoding a big file's record per block request would make
        # serving quadratic); other files with that content are the fallback.
        data = self.disk.read_block(msg.path, msg.offset, msg.size)
        if data is not None and blake3.blake3(data).digest() == msg.block_hash:
            self._send(peer, BlockData(msg.request_id, data))
            return
        for cand in self.store.with_content(msg.content_hash, limit=4):
            if cand.path == msg.path or msg.offset + msg.size > cand.size:
                continue
            data = self.disk.read_block(cand.path, msg.offset, msg.size)
            if data is not None and blake3.blake3(data).digest() == msg.block_hash:
                self._send(peer, BlockData(msg.request_id, data))
                return
        rec = self.store.get(msg.path)
        if rec is not None and rec.content_hash == msg.content_hash:
            # Our file changed under the index - or rotted: the node reads it.
            self._out.append(Rescan((msg.path,), verify=True))
        self._send(peer, BlockMissing(msg.request_id))

    # ------------------------------------------------------ local changes

    def _local_changes(self, records: Iterable[Record]) -> None:
        recs = list(records)
        self._changed = True
        if self.role != Role.RECEIVE_ONLY:
            self._announce(recs)
        for rec in recs:
            pending = self.retry.pop(rec.path, None)
            if pending is not None:
                _, remote, peer = pending
                self._merge(peer, remote)

    # ------------------------------------------------------------ timers

    def _schedule_anti_entropy(self) -> None:
        period = self.timing.anti_entropy_period
        jitter = self.timing.anti_entropy_jitter
        self._next_anti_entropy = self._now + period * (1 + self.rng.uniform(-jitter, jitter))

    def _tick(self) -> None:
        now = self._now
        if self._next_anti_entropy is not None and now >= self._next_anti_entropy:
            self._schedule_anti_entropy()
            active = self._active()
            if active:
                peer = self.rng.choice(sorted(active))
                self._send_root(peer, self.peers[peer], force=True)
            self._collect_tombstones()
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.timing.heartbeat_interval
            self._heartbeat()
        for path, (at, rec, peer) in list(self.retry.items()):
            if now >= at:
                del self.retry[path]
                self._merge(peer, rec)

    def _heartbeat(self) -> None:
        now = self._now
        for peer, state in list(self.peers.items()):
            if now - state.last_heard > self.timing.peer_timeout:
                self._close(peer, "peer timed out")
                continue
            if now - state.last_ping >= self.timing.heartbeat_interval:
                state.last_ping = now
                self._send(peer, Ping(self._request_id()))
            timeout = self.timing.request_timeout
            for rid, (path, idx, sent, size) in list(state.blocks.items()):
                if now - sent > timeout:
                    del state.blocks[rid]
                    state.inflight_bytes -= size
                    job = self.jobs.get(path)
                    if job is not None:
                        job.inflight.pop(idx, None)
                        self._want(job)
            if state.requests and all(now - t > timeout for t in state.requests.values()):
                state.requests.clear()
                state.descent = None
        for job in list(self.jobs.values()):
            if (
                job.stalled_since is not None
                and now - job.stalled_since > self.timing.request_timeout
            ):
                self._abandon(job)  # nobody can serve it now; anti-entropy will bring it back
                if job.repair:
                    self._unrepaired(job)

    # ------------------------------------------------------------ repairs

    def _on_damaged(self, records: Iterable[Record]) -> None:
        """Restore damaged files (see :class:`Damaged`) from peers.

        Never a new version: the damage is not an edit, and published it would
        replace every peer's intact copy. The record stays as it is and its
        content is fetched again like any other - blocks still intact in the
        damaged file are reused (each verified), the rest come from peers -
        then installed over the damaged file only if that is still exactly
        what was verified. With no peer connected, the repair waits for one.
        """
        for rec in records:
            try:
                validate(rec.path)
            except UnsafePathError:
                continue
            if not _same_state(self.store.get(rec.path), rec) or not _repairable(rec):
                continue  # edited, replaced or removed since it was verified
            self._repairs[rec.path] = rec
            self._notice(
                "damaged",
                rec.path,
                "holds other content than recorded although it was not edited "
                "(disk damage?); restoring it from a peer",
            )

    def _start_repairs(self) -> None:
        active = self._active()
        if not active or len(self.jobs) >= MAX_ACTIVE_JOBS:
            return
        for path, rec in list(itertools.islice(self._repairs.items(), REPAIRS_PER_CALL)):
            if len(self.jobs) >= MAX_ACTIVE_JOBS:
                break
            del self._repairs[path]
            if path in self.jobs or path in self.queue or path in self.deletes:
                continue  # a newer version replaces the file anyway
            local = self.store.get(path)
            if local is None or not _same_state(local, rec):
                continue
            job = Job(local, expectation(local), local, local, sorted(active), repair=True)
            self._prepare(job, local)

    def _unrepaired(self, job: Job) -> None:
        self._notice(
            "damaged",
            job.target.path,
            "no connected peer could send its recorded content: it stays damaged "
            "(run `syncron-p2p verify` again once a peer that has it is connected)",
        )

    def _abandon(self, job: Job) -> None:
        """Forget an unfinished ``job``: its replies still on their way are
        ignored, and an install batch holding it skips it."""
        del self.jobs[job.target.path]
        self._wanting.pop(job.target.path, None)

    # ----------------------------------------------------- tombstone GC

    def _collect_tombstones(self) -> None:
        """Forget tombstones every current member is known to hold."""
        if self._members is None:
            return
        members = [m for m in self._members() if m != self.node_id]
        if not members:
            return
        stable = min(self.synced.get(m, 0) for m in members)
        if stable <= 0:
            return
        doomed = [r for r in self.store.all() if r.deleted and 0 < r.sequence <= stable]
        if not doomed:
            return
        for rec in doomed:
            self._mark_forgotten(rec.path, rec.version)
        self.store.forget(r.path for r in doomed)
        self._notice("collected", "", f"{len(doomed)} tombstones are causally stable")

    def _mark_forgotten(self, path: str, version: VersionVector) -> None:
        if not self._any_forgotten:
            self.store.kv_put(ENGINE_NS, ANY_FORGOTTEN, b"1")
            self._any_forgotten = True
        self.store.kv_put(FORGOTTEN_NS, path, encode_vector(version))

    def _notice(self, kind: str, path: str, detail: str) -> None:
        self._out.append(Notice(kind, path, detail))

    # ------------------------------------------------------------ revert

    def revert_local(self, now: float) -> tuple[list[str], list[Effect]]:
        """Undo a receive-only node's own edits: follow the mesh again.

        Every local edit is set aside as a (private) conflict copy, never
        destroyed; its record is dropped so the mesh's version is pulled and
        installed again. Returns the reverted paths and the effects to execute.
        """
        self._now = now
        self._out = []
        reverted: list[str] = []
        if self.role != Role.RECEIVE_ONLY:
            return reverted, []
        with self.store.batch():
            self._revert_own(reverted)
            self.disk.sync_installed()
        for peer in self._active():
            state = self.peers[peer]
            state.root = None
            self._send_root(peer, state, force=True)
        out, self._out = self._out, []
        return reverted, out

    def _revert_own(self, reverted: list[str]) -> None:
        own = [r for r in self.store.all() if self._unpublished(r) and CONFLICT_MARK not in r.path]
        # children first, so directories are empty when their turn comes
        for rec in sorted(own, key=lambda r: r.path, reverse=True):
            keep: list[Record] = []
            try:
                if rec.deleted:
                    pass
                elif rec.type == EntryType.DIRECTORY:
                    self.disk.remove(rec.path, expectation(rec))
                else:
                    copy = self._free_copy(rec)
                    moved = self.disk.move(rec.path, copy.path, expectation(rec))
                    keep.append(replace(copy, fingerprint=moved.fingerprint))
            except (LocalChanged, DiskFailure) as exc:
                self._notice("kept", rec.path, f"not reverted ({exc})")
                continue
            self.store.forget([rec.path])
            if keep:
                self.store.put(keep)
            reverted.append(rec.path)

    # ------------------------------------------------------------ status

    def in_sync_with(self, peer: str) -> bool:
        state = self.peers.get(peer)
        return bool(state and state.root == self.store.merkle.root())

    def expected(self) -> int:
        """How many more records than ours a peer we differ from holds.

        A hint for the driver (a large number: a bulk transfer is starting),
        known from the first Root, before any record arrives.
        """
        if self.role == Role.SEND_ONLY:
            return 0
        # Counts only: a peer with our root has our count (difference 0), and
        # the root itself is not worth recomputing after every call.
        ours = len(self.store.merkle)
        counts = [
            s.root_count - ours
            for s in self.peers.values()
            if s.session.active and s.root is not None
        ]
        return max(counts, default=0)

    def pending(self) -> tuple[int, int]:
        """(files, bytes) still to fetch or apply."""
        files = len(self.jobs) + len(self.queue) + len(self.deletes)
        size = sum(sum(b.size for b in j.missing.values()) for j in self.jobs.values())
        size += sum(r.size for r, _ in self.queue.values())
        return files, size


def _local_sources(
    store: Store, local: Record | None, target: Record
) -> dict[bytes, list[tuple[str, int]]]:
    """Where each block hash of ``target`` might already be on this disk."""
    out: dict[bytes, list[tuple[str, int]]] = {}
    wanted = {b.hash for b in target.blocks}
    donors: list[Record] = []
    if local is not None and not local.deleted and local.type == EntryType.FILE:
        donors.append(local)
    donors.extend(r for r in store.with_content(target.content_hash) if r.path != target.path)
    for donor in donors:
        for b in donor.blocks:
            if b.hash in wanted:
                out.setdefault(b.hash, []).append((donor.path, b.offset))
    return out


def _repairable(rec: Record) -> bool:
    return rec.type == EntryType.FILE and not rec.deleted and rec.fingerprint is not None


def _same_state(a: Record | None, b: Record | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return entry_digest(a) == entry_digest(b) and a.fingerprint == b.fingerprint


def _check_vector(path: str, vector: VersionVector) -> None:
    """Refuse a peer's vector past :data:`PLAUSIBLE_COUNTER` / :data:`PLAUSIBLE_ACTORS`."""
    entries = vector.entries
    if len(entries) > PLAUSIBLE_ACTORS or any(c > PLAUSIBLE_COUNTER for _, c in entries):
        raise RemoteProtocolError(f"implausible version vector for {path!r}")


def _regular_file(there: Observation | None) -> bool:
    """``there`` is a regular file (a special file is observed as a file that
    never matches: size -1)."""
    return (
        there is not None
        and there.type == EntryType.FILE
        and there.fingerprint is not None
        and there.fingerprint.size >= 0
    )
