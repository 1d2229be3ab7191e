"""The one place that knows msgpack: messages <-> framed bytes.

Frame: a 4-byte big-endian body length, then a msgpack array whose first
item is the message type id (``docs/protocol.md`` lists them). Every size is
checked before anything is allocated for it, and every field's type and
range is checked on decode. Hostile bytes can only ever raise
:class:`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.index.records import HASH_SIZE, SEAL_OVERHEAD, Block, EntryType, Record
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.protocol.messages import (
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

MAX_FRAME = 8 * 1024 * 1024
MAX_BLOCK = 4 * 1024 * 1024  # a block (policy: at most 1 MiB, + 40 sealed): its reply fits a frame
MAX_STR = 8192
MAX_ITEMS = 4096  # items of any list (records of a page: senders send 256)
MAX_FILE_SIZE = 1 << 50
MAX_INLINE = 1024 * 1024  # one inline content item (the largest block)
HEADER = 4

TYPE_IDS: dict[type, int] = {
    Hello: 1,
    Goodbye: 2,
    Ping: 3,
    Pong: 4,
    Root: 5,
    NodeRequest: 6,
    NodeReply: 7,
    RangeRequest: 8,
    RecordRequest: 9,
    Records: 10,
    BlockRequest: 11,
    BlockData: 12,
    BlockMissing: 13,
    Collected: 14,
}


# ------------------------------------------------------------------ encoding


def encode_record(r: Record) -> list[Any]:
    blocks = b"".join(b.size.to_bytes(4, "big") + b.hash for b in r.blocks)
    fields: list[Any] = [
        r.path,
        int(r.type),
        r.size,
        r.mode,
        r.content_hash,
        r.deleted,
        r.target,
        r.origin,
        r.origin_sum,
        r.version.encode(),
        blocks,
    ]
    if r.sealed:
        fields.append(True)  # field 11, only when set: older peers' records stay 11 fields
    return fields


def _body(msg: Message) -> list[Any]:
    match msg:
        case Hello():
            return [msg.min_version, msg.max_version, msg.node_id, msg.role, list(msg.features)]
        case Goodbye():
            return [msg.reason]
        case Ping() | Pong():
            return [msg.nonce]
        case Root():
            return [msg.root, msg.count]
        case NodeRequest():
            return [msg.request_id, [[lv, end] for lv, end in msg.nodes]]
        case NodeReply():
            return [
                msg.request_id,
                [
                    [
                        n.level,
                        n.end,
                        n.start,
                        n.exists,
                        [[c.end, c.hash, c.count] for c in n.children],
                    ]
                    for n in msg.nodes
                ],
            ]
        # The optional trailing fields (feature "inline-content") are only
        # written when set, so a peer without the feature never sees them.
        case RangeRequest():
            return [msg.request_id, msg.start, msg.end, *([msg.inline] if msg.inline else [])]
        case RecordRequest():
            return [msg.request_id, list(msg.paths), *([msg.inline] if msg.inline else [])]
        case Records():
            body = [msg.request_id, [encode_record(r) for r in msg.records], msg.done]
            if msg.inline:
                body.append([[i, data] for i, data in msg.inline])
            return body
        case BlockRequest():
            return [
                msg.request_id,
                msg.path,
                msg.content_hash,
                msg.offset,
                msg.size,
                msg.block_hash,
            ]
        case BlockData():
            return [msg.request_id, msg.data]
        case BlockMissing():
            return [msg.request_id]
        case Collected():
            return [[[path, v.encode()] for path, v in msg.entries]]
    raise TypeError(f"not a message: {msg!r}")  # pragma: no cover


def encode(msg: Message) -> bytes:
    """One framed message."""
    body: bytes = msgpack.packb([TYPE_IDS[type(msg)], *_body(msg)], use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message too large to send ({len(body)} bytes)")
    return len(body).to_bytes(HEADER, "big") + body


# ------------------------------------------------------------------ decoding


def _fail(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed message: {why}")


def _int(v: Any, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail("integer out of range")
    return v


def _str(v: Any, limit: int = MAX_STR) -> str:
    if type(v) is not str or len(v) > limit:
        raise _fail("bad string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _bytes(v: Any, size: int | None = None, limit: int = MAX_BLOCK) -> bytes:
    if type(v) is not bytes or len(v) > limit or (size is not None and len(v) != size):
        raise _fail("bad bytes")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _fail("bad boolean")
    return v


def _list(v: Any, limit: int = MAX_ITEMS) -> list[Any]:
    if type(v) is not list or len(v) > limit:
        raise _fail("bad list")
    return v


def _fields(v: Any, n: int) -> list[Any]:
    if type(v) is not list or len(v) != n:
        raise _fail("wrong field count")
    return v


_ENTRY_TYPES = (EntryType.FILE, EntryType.DIRECTORY, EntryType.SYMLINK)
# Version counters and origin sums are bounded so that every sum of a vector
# (at most MAX_VECTOR entries) fits the index's 64-bit integers: a peer's
# counter of 2**63 - 1 was stored, and the next local edit minted a version
# whose origin sum SQLite could not hold (the scan failed, the node stopped).
# Nodes one NodeRequest of ours names: a reply holds at most 16 children of
# each (paths up to 4 KiB), so it stays well inside MAX_FRAME. Requests of up
# to MAX_NODES_ACCEPTED are still answered (earlier nodes sent such); a reply
# that would not fit a frame closes the connection (runner), nothing worse.
MAX_NODES_PER_REQUEST = 64
MAX_NODES_ACCEPTED = 1024
MAX_COUNTER = 1 << 48  # a million edits per second by one actor: nine years
MAX_VECTOR = 4096
MAX_ORIGIN_SUM = MAX_COUNTER * MAX_VECTOR


def record_wire_size(rec: Record) -> int:
    """An upper estimate of ``rec``'s encoded size: what pages of records are
    cut by (their version vectors and block lists included - a page of 256
    records of 1 GiB files, cut by count alone, was past MAX_FRAME)."""
    return (
        64
        + 4 * (len(rec.path) + len(rec.target) + len(rec.origin))
        + 38 * len(rec.blocks)
        + sum(12 + 4 * len(actor) for actor, _ in rec.version.entries)
    )


def decode_record(v: Any, vectors: dict[tuple[str, int], VersionVector] | None = None) -> Record:
    """One record; ``vectors`` memoises single-actor vectors across a message.

    Written out by hand (no helper per field): it runs once per record of
    every page a peer sends, thousands per second in a bulk transfer.
    """
    if type(v) is not list:
        raise _fail("wrong field count")
    sealed = False
    if len(v) == 12:
        sealed = _bool(v[11])
        v = v[:11]
    if len(v) != 11:
        raise _fail("wrong field count")
    path, kind, size, mode, chash, deleted, target, origin, osum, version, raw = v
    if type(kind) is not int or not 0 <= kind <= 2:
        raise _fail("bad entry type")
    etype = _ENTRY_TYPES[kind]
    if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
        raise _fail("integer out of range")
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        raise _fail("integer out of range")
    if type(osum) is not int or not 0 <= osum <= MAX_ORIGIN_SUM:
        raise _fail("integer out of range")
    if type(deleted) is not bool:
        raise _fail("bad boolean")
    if type(path) is not str or len(path) > 4096:
        raise _fail("bad string")
    if type(target) is not str or len(target) > 4096:
        raise _fail("bad string")
    if type(origin) is not str or len(origin) > 256:
        raise _fail("bad string")
    if type(chash) is not bytes or len(chash) != HASH_SIZE:
        raise _fail("bad bytes")
    if type(raw) is not bytes or len(raw) > MAX_FRAME:
        raise _fail("bad bytes")
    vector = None
    if vectors is not None and type(version) is list and len(version) == 1:
        one = version[0]
        if type(one) is list and len(one) == 2 and type(one[0]) is str and type(one[1]) is int:
            vector = vectors.get((one[0], one[1]))
    if vector is None:
        vector = _vector(version)
        if vectors is not None and len(vector.entries) == 1:
            vectors[vector.entries[0]] = vector
    step = 4 + HASH_SIZE
    n = len(raw)
    if n % step:
        raise _fail("bad block list")
    parsed: list[Block] = []
    offset = 0
    for i in range(0, n, step):
        bsize = int.from_bytes(raw[i : i + 4], "big")
        if not 0 < bsize <= MAX_BLOCK:
            raise _fail("bad block size")
        parsed.append(Block(offset, bsize, raw[i + 4 : i + step]))
        offset += bsize
    if etype == EntryType.FILE and not deleted:
        if offset != size:
            raise _fail("blocks do not add up to the file size")
    elif parsed:
        raise _fail("blocks on a non-file record")
    elif sealed:
        raise _fail("sealed flag on a non-file record")
    if sealed and any(b.size <= SEAL_OVERHEAD for b in parsed):
        raise _fail("sealed block shorter than its nonce and tag")
    return Record(
        path, etype, size, mode, chash, vector, deleted, tuple(parsed), target, origin, osum, sealed
    )


def _vector(v: Any) -> VersionVector:
    if type(v) is not list or len(v) > MAX_VECTOR:
        raise _fail("bad list")
    entries = []
    last = None
    for item in v:
        if type(item) is not list or len(item) != 2:
            raise _fail("wrong field count")
        actor, counter = item
        if type(actor) is not str or len(actor) > 256:
            raise _fail("bad string")
        if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
            raise _fail("integer out of range")
        if last is not None and actor <= last:
            raise _fail("version vector not canonical")  # actors strictly increasing
        last = actor
        entries.append((actor, counter))
    return VersionVector(tuple(entries))


def _inline(v: Any, count: int) -> tuple[tuple[int, bytes], ...]:
    out = []
    last = -1
    for item in _list(v):
        idx, data = _fields(item, 2)
        idx = _int(idx, 0, count - 1)
        if idx <= last:
            raise _fail("inline content not in record order")
        last = idx
        out.append((idx, _bytes(data, limit=MAX_INLINE)))
    return tuple(out)


def _records(f: list[Any]) -> Records:
    vectors: dict[tuple[str, int], VersionVector] = {}
    records = tuple(decode_record(x, vectors) for x in _list(f[1]))
    inline = _inline(f[3], len(records)) if len(f) > 3 else ()
    return Records(_int(f[0]), records, _bool(f[2]), inline)


def _collected(v: Any) -> tuple[str, VersionVector]:
    path, vector = _fields(v, 2)
    return _str(path, 4096), _vector(vector)


def _summary(v: Any) -> NodeSummary:
    end, h, count = _fields(v, 3)
    return NodeSummary(_opt_str(end), _bytes(h, HASH_SIZE), _int(count))


def _node_children(v: Any) -> NodeChildren:
    level, end, start, exists, children = _fields(v, 5)
    return NodeChildren(
        _int(level, 1, 64),
        _opt_str(end),
        _opt_str(start),
        _bool(exists),
        tuple(_summary(c) for c in _list(children, 4096)),
    )


def _node_ref(v: Any) -> tuple[int, str | None]:
    level, end = _fields(v, 2)
    return _int(level, 1, 64), _opt_str(end)


# type id -> (field counts accepted, builder). A second count admits the
# optional trailing field of feature "inline-content".
_DECODERS: dict[int, tuple[tuple[int, ...], Callable[[list[Any]], Message]]] = {
    1: (
        (5,),
        lambda f: Hello(
            _int(f[0]),
            _int(f[1]),
            _str(f[2], 256),
            _str(f[3], 64),
            tuple(_str(x, 64) for x in _list(f[4], 64)),
        ),
    ),
    2: ((1,), lambda f: Goodbye(_str(f[0], 1024))),
    3: ((1,), lambda f: Ping(_int(f[0]))),
    4: ((1,), lambda f: Pong(_int(f[0]))),
    5: ((2,), lambda f: Root(_bytes(f[0], HASH_SIZE), _int(f[1]))),
    6: (
        (2,),
        lambda f: NodeRequest(
            _int(f[0]), tuple(_node_ref(x) for x in _list(f[1], MAX_NODES_ACCEPTED))
        ),
    ),
    7: ((2,), lambda f: NodeReply(_int(f[0]), tuple(_node_children(x) for x in _list(f[1], 1024)))),
    8: (
        (3, 4),
        lambda f: RangeRequest(
            _int(f[0]), _opt_str(f[1]), _opt_str(f[2]), _int(f[3], 1, MAX_INLINE) if f[3:] else 0
        ),
    ),
    9: (
        (2, 3),
        lambda f: RecordRequest(
            _int(f[0]),
            tuple(_str(x, 4096) for x in _list(f[1], 4096)),
            _int(f[2], 1, MAX_INLINE) if f[2:] else 0,
        ),
    ),
    10: ((3, 4), _records),
    11: (
        (6,),
        lambda f: BlockRequest(
            _int(f[0]),
            _str(f[1], 4096),
            _bytes(f[2], HASH_SIZE),
            _int(f[3], 0, MAX_FILE_SIZE),
            _int(f[4], 0, MAX_BLOCK),
            _bytes(f[5], HASH_SIZE),
        ),
    ),
    12: ((2,), lambda f: BlockData(_int(f[0]), _bytes(f[1], limit=MAX_BLOCK))),
    13: ((1,), lambda f: BlockMissing(_int(f[0]))),
    14: ((1,), lambda f: Collected(tuple(_collected(x) for x in _list(f[0], 4096)))),
}


# Arrays a frame may hold: one per LIST_BYTES bytes of it, plus LIST_SLACK.
# Every array of a valid message beyond a few thousand brings at least that
# many bytes of its own (a version entry ~34, a record with its vector and
# inline item ~25 per array, a node summary ~37); the slack covers the rest
# (a NodeReply of 1,024 nodes without children, a Collected of 4,096 entries
# with empty vectors, the message itself). Without a budget an 8 MiB frame of
# empty arrays (one byte each) decoded into ~600 MB before any field was
# checked; with it, the decode stops at ~530,000 arrays (~40 MB; arrays
# opened and never closed, as deep as msgpack nests, add ~32 MB at 4,096 items).
LIST_BYTES = 16
LIST_SLACK = 16384


class _TooManyArrays(Exception):
    pass


def decode_body(body: bytes | bytearray | memoryview) -> Message:
    """Decode one frame body (without its length header)."""
    left = len(body) // LIST_BYTES + LIST_SLACK

    def count(array: list[Any]) -> list[Any]:
        nonlocal left
        left -= 1
        if left < 0:
            raise _TooManyArrays
        return array

    try:
        obj = msgpack.unpackb(
            body,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_FRAME,
            max_str_len=MAX_FRAME,
            max_array_len=MAX_ITEMS,  # no valid list is longer (see _list's limits)
            max_map_len=0,
            max_ext_len=0,
            list_hook=count,
        )
    except _TooManyArrays:
        raise _fail("too many arrays for the frame's size") from None
    except Exception as exc:  # msgpack raises many types on hostile input
        raise _fail(f"undecodable ({type(exc).__name__})") from None
    if type(obj) is not list or not obj:
        raise _fail("not a message array")
    type_id = obj[0]
    if type(type_id) is not int or type_id not in _DECODERS:
        raise _fail(f"unknown message type {type_id!r}")
    counts, build = _DECODERS[type_id]
    fields = obj[1:]
    if len(fields) not in counts:
        raise _fail("wrong field count")
    return build(fields)


class Decoder:
    """Incremental frame decoder: ``feed`` bytes, then ``next`` until None."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first undecoded frame in _buf
        self._max = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.writable().extend(data)

    def writable(self) -> bytearray:
        """The buffer new bytes go on the end of (instead of :meth:`feed`).

        For a reader that appends in place (``SecureStream.receive_into``);
        it must only append.
        """
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()  # everything decoded: start over, no copy
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]  # drop decoded frames once they dominate
            self._pos = 0
        return self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> Message | None:
        # Frames are consumed by moving an offset, not by deleting them from
        # the front (a copy of everything after, per frame), and decoded
        # straight from the buffer: bulk transfers carry 1 GiB through here,
        # and the only copy of a block is the bytes object msgpack makes.
        pos, buf = self._pos, self._buf
        if len(buf) - pos < HEADER:
            return None
        size = int.from_bytes(buf[pos : pos + HEADER], "big")
        if size > self._max or size == 0:
            raise _fail(f"frame length {size} out of range")
        end = pos + HEADER + size
        if len(buf) < end:
            return None
        self._pos = end
        with memoryview(buf) as view, view[pos + HEADER : end] as body:
            return decode_body(body)
