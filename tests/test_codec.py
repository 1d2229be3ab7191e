"""The wire codec: exact round trips, and hostile bytes raise one error type."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.index.records import Block, EntryType, Record
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.protocol import codec
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

h32 = st.binary(min_size=32, max_size=32)
text = st.text(max_size=40)
opt = st.one_of(st.none(), text)
u = st.integers(min_value=0, max_value=2**40)


@st.composite
def records(draw: st.DrawFn) -> Record:
    deleted = draw(st.booleans())
    kind = draw(st.sampled_from(list(EntryType)))
    sizes = draw(st.lists(st.integers(1, 1 << 20), max_size=4)) if kind == 0 and not deleted else []
    blocks, off = [], 0
    for s in sizes:
        blocks.append(Block(off, s, draw(h32)))
        off += s
    actors = draw(st.dictionaries(st.text(min_size=1, max_size=10), st.integers(1, 99), max_size=4))
    return Record(
        path=draw(st.text(min_size=1, max_size=30)),
        type=kind,
        size=off if kind == 0 and not deleted else draw(u),
        mode=draw(st.integers(0, 0o7777)),
        content_hash=draw(h32),
        version=VersionVector.of(actors),
        deleted=deleted,
        blocks=tuple(blocks),
        target=draw(text),
        origin=draw(text),
        origin_sum=draw(u),
    )


inline_sizes = st.integers(0, codec.MAX_INLINE)


@st.composite
def records_messages(draw: st.DrawFn) -> Records:
    recs = tuple(draw(st.lists(records(), max_size=3)))
    chosen = sorted(draw(st.sets(st.integers(0, max(len(recs) - 1, 0)))) if recs else [])
    inline = tuple((i, draw(st.binary(max_size=64))) for i in chosen)
    return Records(draw(u), recs, draw(st.booleans()), inline)


messages = st.one_of(
    st.builds(Hello, u, u, text, text, st.lists(text, max_size=3).map(tuple)),
    st.builds(Goodbye, text),
    st.builds(Ping, u),
    st.builds(Pong, u),
    st.builds(Root, h32, u),
    st.builds(NodeRequest, u, st.lists(st.tuples(st.integers(1, 8), opt), max_size=4).map(tuple)),
    st.builds(
        NodeReply,
        u,
        st.lists(
            st.builds(
                NodeChildren,
                st.integers(1, 8),
                opt,
                opt,
                st.booleans(),
                st.lists(st.builds(NodeSummary, opt, h32, u), max_size=3).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(RangeRequest, u, opt, opt, st.integers(0, codec.MAX_INLINE)),
    st.builds(RecordRequest, u, st.lists(text, max_size=4).map(tuple), inline_sizes),
    records_messages(),
    st.builds(BlockRequest, u, text, h32, u, st.integers(0, 1 << 20), h32),
    st.builds(BlockData, u, st.binary(max_size=300)),
    st.builds(BlockMissing, u),
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    decoder = codec.Decoder()
    decoder.feed(codec.encode(msg))
    assert decoder.next() == msg
    assert decoder.next() is None and decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.integers(1, 7))
def test_streaming_in_arbitrary_pieces(msgs: list[Message], piece: int) -> None:
    data = b"".join(codec.encode(m) for m in msgs)
    decoder = codec.Decoder()
    out: list[Message] = []
    for i in range(0, len(data), piece):
        decoder.feed(data[i : i + piece])
        while (m := decoder.next()) is not None:
            out.append(m)
    assert out == msgs


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_hostile_bodies_raise_only_remote_protocol_error(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        codec.decode_body(body)


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=8),
        st.binary(max_size=40),
        st.floats(),
    ),
    lambda inner: st.lists(inner, max_size=12),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 16), msgpack_values)
def test_wellformed_msgpack_with_wrong_shapes_is_rejected_cleanly(
    type_id: int, rest: object
) -> None:
    body = msgpack.packb([type_id, *rest] if isinstance(rest, list) else [type_id, rest])
    with contextlib.suppress(RemoteProtocolError):
        codec.decode_body(body)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_mutated_frames_raise_only_remote_protocol_error(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(codec.encode(msg))
    i = data.draw(st.integers(codec.HEADER, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(RemoteProtocolError):
        codec.decode_body(bytes(frame[codec.HEADER :]))
    # The same through the Decoder (which decodes from a view of its buffer):
    # after a failure it goes on decoding what follows.
    decoder = codec.Decoder()
    decoder.writable().extend(frame)
    with contextlib.suppress(RemoteProtocolError):
        decoder.next()
    decoder.feed(codec.encode(msg))
    for _ in range(3):
        decoder.feed(b"")  # compaction may move the buffer
    assert decoder.next() == msg


def test_huge_length_field_is_refused_before_allocation() -> None:
    decoder = codec.Decoder()
    decoder.feed((codec.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="frame length"):
        decoder.next()


def test_records_must_be_internally_consistent() -> None:
    good = Record(
        "a",
        EntryType.FILE,
        3,
        0o644,
        b"\0" * 32,
        VersionVector.of({"x": 1}),
        blocks=(Block(0, 3, b"\1" * 32),),
    )
    body = codec._body(Records(1, (good,), True))
    wire = codec.encode_record(good)
    wire[2] = 4  # size no longer matches the blocks
    with pytest.raises(RemoteProtocolError, match="add up"):
        codec.decode_body(msgpack.packb([10, body[0], [wire], True]))
    wire = codec.encode_record(good)
    wire[9] = [["b", 1], ["a", 1]]  # unsorted vector
    with pytest.raises(RemoteProtocolError, match="canonical"):
        codec.decode_body(msgpack.packb([10, body[0], [wire], True]))


def test_counters_and_origin_sums_are_bounded() -> None:
    """Every sum of a vector's counters must fit a 64-bit integer (the index's):
    a peer's counter of 2**63 - 1 was stored, and the next local edit minted a
    version SQLite could not hold - the scan failed and the node stopped."""
    top = Record(
        "a",
        EntryType.FILE,
        0,
        0o644,
        b"\0" * 32,
        VersionVector.of({f"actor{i:04d}": codec.MAX_COUNTER for i in range(codec.MAX_VECTOR)}),
        origin_sum=codec.MAX_ORIGIN_SUM,
    )
    assert sum(top.version.as_dict().values()) + 1 < 2**63  # (one more bump still fits)
    body = codec._body(Records(1, (top,), True))
    assert codec.decode_body(msgpack.packb([10, *body])) == Records(1, (top,), True)
    for field, value in (
        (9, [["x", codec.MAX_COUNTER + 1]]),
        (9, [["x", 2**63 - 1]]),
        (8, codec.MAX_ORIGIN_SUM + 1),
    ):
        wire = codec.encode_record(top)
        wire[field] = value
        with pytest.raises(RemoteProtocolError, match="out of range"):
            codec.decode_body(msgpack.packb([10, body[0], [wire], True]))


def test_optional_inline_fields_are_absent_unless_set() -> None:
    """A peer without feature inline-content must get the original layouts."""
    rec = Record("a", EntryType.DIRECTORY, 0, 0o755, b"\0" * 32, VersionVector.of({"x": 1}))
    plain = [RangeRequest(1, None, "z"), RecordRequest(2, ("a",)), Records(3, (rec,), True)]
    for msg, fields in zip(plain, (3, 2, 3), strict=True):
        body = msgpack.unpackb(codec.encode(msg)[codec.HEADER :])
        assert len(body) == 1 + fields
    rich = [
        RangeRequest(1, None, "z", 4096),
        RecordRequest(2, ("a",), 4096),
        Records(3, (rec,), True, ((0, b"data"),)),
    ]
    for msg, fields in zip(rich, (4, 3, 4), strict=True):
        body = msgpack.unpackb(codec.encode(msg)[codec.HEADER :])
        assert len(body) == 1 + fields
        assert codec.decode_body(codec.encode(msg)[codec.HEADER :]) == msg


def _traced_peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(RemoteProtocolError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_frame_of_empty_arrays_is_refused_before_it_takes_much_memory() -> None:
    # 2,040 arrays of 4,096 empty arrays: 8 MiB on the wire, ~600 MB once
    # decoded if nothing stops it (one byte each on the wire, ~70 in memory).
    inner = b"\xdc\x10\x00" + b"\x90" * 4096
    body = b"\xdc\x07\xf8" + inner * 2040
    assert len(body) <= codec.MAX_FRAME
    with pytest.raises(RemoteProtocolError, match="too many arrays"):
        codec.decode_body(body)
    assert _traced_peak(lambda: codec.decode_body(body)) < 64 * 2**20


def test_an_array_longer_than_any_valid_list_is_refused_before_it_is_allocated() -> None:
    n = codec.MAX_FRAME - 10
    body = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    with pytest.raises(RemoteProtocolError):
        codec.decode_body(body)
    assert _traced_peak(lambda: codec.decode_body(body)) < 2**20


def test_arrays_opened_and_never_closed_cost_little() -> None:
    # Each array header allocates its items at once; nested ones are never
    # finished (so never counted): what bounds them is the item limit.
    for header in (b"\xdc\xff\xff", b"\xdc\x10\x00"):
        body = header * 2000 + b"\x90" * 100_000
        with pytest.raises(RemoteProtocolError):
            codec.decode_body(body)
        assert _traced_peak(lambda b=body: codec.decode_body(b)) < 40 * 2**20


def _actor(i: int) -> str:
    return f"N{i:04d}X-XXXXX-XXXXX-XXXXX-XXXXX.{i}"  # NODE_ID.EPOCH: 31+ characters


def test_the_densest_valid_frames_still_decode() -> None:
    # Everything valid that packs arrays tightest stays inside the budget.
    wide = VersionVector(tuple((_actor(i), 1) for i in range(codec.MAX_VECTOR)))
    rec = Record(
        path="p", type=EntryType.DIRECTORY, size=0, mode=0o755, content_hash=bytes(32), version=wide
    )
    page = Records(1, tuple(rec for _ in range(50)), True)
    bare = NodeReply(2, tuple(NodeChildren(3, None, None, False, ()) for _ in range(1024)))
    one = VersionVector(((_actor(1), 1),))
    collected = Collected(tuple((f"t{i}", one) for i in range(4096)))
    for msg in (page, bare, collected):
        frame = codec.encode(msg)
        assert codec.decode_body(frame[codec.HEADER :]) == msg
    assert len(codec.encode(page)) > 7 * 2**20  # near the frame limit: ~205,000 arrays
