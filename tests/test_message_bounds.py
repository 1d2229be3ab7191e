"""Messages a node sends stay inside the frame limit, whatever it holds.

Found by review (ninth session): pushes were paged by record count alone (a
scan finding 60 files of 1 GiB pushed one 8.8 MB page), range replies
estimated a record's size without its version vector, and a NodeRequest
could name 1,024 nodes whose reply grew to 12 MB. A message past
``MAX_FRAME`` made the encoder raise in the node, which counted as an engine
fault - four of them stopped the node.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from meshnet import MeshNet

from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.index import scanner as scanner_module
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import Block, EntryType, Record
from syncron_p2p.index.scanner import Scanner
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import BlockData, BlockRequest, Message, NodeRequest, Records
from syncron_p2p.sync.effects import Close, Effect, Received, Send
from syncron_p2p.sync.engine import PLAUSIBLE_ACTORS, PLAUSIBLE_COUNTER, SERVE_BYTES, Engine

GiB_BLOCKS = 4096  # a 1 GiB file at the average block size (256 KiB)


def big_record(i: int, actors: int = 1) -> Record:
    blocks = tuple(Block(k * 262144, 262144, bytes([i % 256]) * 32) for k in range(GiB_BLOCKS))
    version = VersionVector.of({f"ACTOR{a:03d}.{'e' * 40}": 7 for a in range(actors)})
    return Record(
        f"videos/{'long name ' * 10}{i:03d}.mkv",
        EntryType.FILE,
        GiB_BLOCKS * 262144,
        0o644,
        bytes([i % 256]) * 32,
        version,
        blocks=blocks,
        origin=f"ACTOR000.{'e' * 40}",
        origin_sum=7 * actors,
    )


def sent(engine: Engine) -> list[Message]:
    """What ``engine`` sent since its last call, each checked to fit a frame."""
    out, engine._out = engine._out, []
    messages = []
    for effect in out:
        if isinstance(effect, Send):
            frame = codec.encode(effect.message)  # (raises past MAX_FRAME)
            messages.append(codec.decode_body(frame[codec.HEADER :]))
    return messages


def test_a_push_of_many_huge_files_is_paged_by_bytes() -> None:
    net = MeshNet(2, seed=1, shuffle=False)
    net.connect_all()
    net.run()
    engine = net.node(0).engine
    engine._announce([big_record(i) for i in range(60)])
    engine._flush_announcements()
    frames = sent(engine)
    pushed = [r for m in frames if isinstance(m, Records) for r in m.records]
    assert len(pushed) == 60 and len(frames) > 1


def test_range_reply_pages_count_version_vectors() -> None:
    """Records that are mostly version vector (a path edited by 2,000 nodes
    over the years) are cut into pages by their whole size."""
    net = MeshNet(2, seed=1, shuffle=False)
    net.connect_all()
    net.run()
    engine = net.node(0).engine
    recs = []
    for i in range(300):
        rec = big_record(i, actors=2000)
        recs.append(Record(rec.path, EntryType.DIRECTORY, 0, 0o755, rec.content_hash, rec.version))
    engine._serve_records("node1", engine.peers["node1"], 1, recs)
    served = [r for m in sent(engine) if isinstance(m, Records) for r in m.records]
    assert len(served) == 300


def test_node_requests_are_split_and_bounded() -> None:
    net = MeshNet(2, seed=1, shuffle=False)
    net.connect_all()
    net.run()
    engine = net.node(0).engine
    peer = "node1"
    wants = [(2, f"path{i:04d}") for i in range(200)]
    engine._issue(peer, engine.peers[peer], (wants, [], []))
    requests = sent(engine)
    node_requests = [m for m in requests if isinstance(m, NodeRequest)]
    assert sum(len(m.nodes) for m in node_requests) == 200
    assert all(len(m.nodes) <= codec.MAX_NODES_PER_REQUEST for m in node_requests)
    too_many = NodeRequest(1, tuple((1, f"p{i}") for i in range(codec.MAX_NODES_ACCEPTED + 1)))
    body = codec._body(too_many)
    with pytest.raises(RemoteProtocolError):
        codec.decode_body(msgpack.packb([codec.TYPE_IDS[NodeRequest], *body]))


def test_a_file_with_too_many_blocks_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner_module, "MAX_RECORD_BLOCKS", 3)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "big.bin").write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB: >= 4 blocks
    (folder / "small.txt").write_bytes(b"hello")
    with Index.open(folder, "NODE") as index:
        scanner = Scanner(folder, index)  # (a node keeps one for its scans)
        result = scanner.scan()
        assert index.get("big.bin") is None and index.get("small.txt") is not None
        assert any(e.path == "big.bin" and "too large" in e.reason for e in result.errors)
        # scanned again: reported, but not read again (tens of GiB each time)
        read: list[str] = []
        real = scanner_module._hash_stable

        def counting(p: Any, *args: Any) -> Any:
            read.append(p.rel)
            return real(p, *args)

        monkeypatch.setattr(scanner_module, "_hash_stable", counting)
        again = scanner.scan()
        assert read == []
        assert any(e.path == "big.bin" and "too large" in e.reason for e in again.errors)
        with (folder / "big.bin").open("ab") as fh:  # changed: read again
            fh.write(b"more")
        scanner.scan()
        assert read == ["big.bin"]


def test_a_burst_of_block_requests_is_answered_a_slice_per_call() -> None:
    """A thousand block requests in one batch were all read and queued in one
    engine call (a gigabyte of replies held at once); now ~SERVE_BYTES a call."""
    net = MeshNet(2, seed=1, shuffle=False)
    net.connect_all()
    content = random.Random(3).randbytes(4 * 2**20)
    net.edit(0, lambda d: d.write("big.bin", content))
    net.run()
    rec = net.node(0).index.get("big.bin")
    assert rec is not None and len(rec.blocks) > 1
    requests = [
        Received(
            "node1",
            BlockRequest(1000 + i, rec.path, rec.content_hash, b.offset, b.size, b.hash),
        )
        for i, b in enumerate(list(rec.blocks) * 16)
    ]
    wanted = sum(m.message.size for m in requests)
    engine = net.node(0).engine

    def blocks(effects: list[Effect]) -> list[BlockData]:
        return [
            e.message for e in effects if isinstance(e, Send) and isinstance(e.message, BlockData)
        ]

    served = blocks(engine.handle_many(requests, net.now))
    biggest = max(b.size for b in rec.blocks)
    assert sum(len(m.data) for m in served) <= SERVE_BYTES + biggest
    assert engine.has_more()
    while engine.has_more():
        more = engine.handle_many([], net.now)
        served += [
            e.message for e in more if isinstance(e, Send) and isinstance(e.message, BlockData)
        ]
    assert sum(len(m.data) for m in served) == wanted
    assert [m.request_id for m in served] == [r.message.request_id for r in requests]  # in order


def test_a_peer_cannot_push_our_counter_to_the_codecs_limit() -> None:
    """A member's record carrying our own counter at the codec's limit was
    accepted; our next edit of that path then minted a version every peer
    refused to decode (review). Vectors are refused well below the limit."""
    net = MeshNet(2, seed=1, shuffle=False)
    net.connect_all()
    net.run()
    engine = net.node(0).engine
    me = net.node(0).index.actor

    def push(vector: VersionVector, path: str) -> list[Effect]:
        rec = Record(path, EntryType.DIRECTORY, 0, 0o755, bytes(32), vector, origin=me)
        return engine.handle_many([Received("node1", Records(0, (rec,), True))], net.now)

    fine = push(VersionVector.of({me: PLAUSIBLE_COUNTER}), "ok")
    assert not [e for e in fine if isinstance(e, Close)]
    stored = net.node(0).index.get("ok")
    assert stored is not None
    bumped = stored.version.bump(me)  # our next edit still decodes everywhere
    frame = codec.encode(Records(0, (replace(stored, version=bumped),), True))
    assert codec.decode_body(frame[codec.HEADER :])
    for vector in (
        VersionVector.of({me: PLAUSIBLE_COUNTER + 1}),
        VersionVector.of({f"a{i:05d}": 1 for i in range(PLAUSIBLE_ACTORS + 1)}),
    ):
        effects = push(vector, "evil")
        assert [e for e in effects if isinstance(e, Close)]
        assert net.node(0).index.get("evil") is None
        net.connect("node0", "node1")  # (the peer was disconnected: again)
        net.run()
