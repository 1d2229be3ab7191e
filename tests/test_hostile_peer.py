"""A hostile (authenticated) peer: malformed frames, unsafe paths, bad blocks,
huge length fields. The node never crashes, never writes outside its folder or
into its own state, and never corrupts a file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import msgpack
import pytest

from syncron_p2p.config import Timing
from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.index.blocks import chunk_bytes
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import EMPTY_HASH, EntryType, Record
from syncron_p2p.index.scanner import Scanner
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import (
    BlockData,
    BlockRequest,
    Hello,
    Message,
    Records,
    Root,
)
from syncron_p2p.protocol.session import Session
from syncron_p2p.sync.effects import Close, Effect, LocalChanges, PeerUp, Received, Send, Tick
from syncron_p2p.sync.engine import Engine

EVIL = "EVIL"


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in files + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


class Victim:
    """A real engine on a real folder, talking to a scripted hostile peer."""

    def __init__(self, tmp: Path) -> None:
        self.outside = tmp
        self.root = tmp / "folder"
        self.root.mkdir(parents=True)
        (self.root / "keep.txt").write_bytes(b"precious")
        (self.root / "sub").mkdir()
        (self.root / "sub" / "a.txt").write_bytes(b"alpha")
        (tmp / "secret.txt").write_bytes(b"outside the folder")
        self.index = Index.open(self.root, "VICTIM")
        self.disk = RealDisk(self.root)
        self.engine = Engine(self.index, self.disk, "VICTIM", timing=Timing())
        changed = Scanner(self.root, self.index).scan().changed
        self.now = 0.0
        self.feed(LocalChanges(tuple(changed)))
        self.before_outside = snapshot(tmp)
        self.state_files = sorted(p.name for p in (self.root / ".syncron").iterdir())
        self.closed = False
        self.feed(PeerUp(EVIL))
        hello = Session(EVIL, "VICTIM", "send-receive").hello
        self.send(hello)

    def feed(self, event: object) -> list[Effect]:
        self.now += 0.1
        effects = self.engine.handle(event, self.now)  # type: ignore[arg-type]
        while self.engine.flushing():  # (the disk flushes beside the engine)
            self.disk.wait_flushes()
            effects += self.engine.handle(Tick(), self.now)
        if any(isinstance(e, Close) and e.peer == EVIL for e in effects):
            self.closed = True
        return effects

    def send(self, msg: Message) -> list[Effect]:
        return self.feed(Received(EVIL, msg))

    def sent(self, effects: list[Effect]) -> list[Message]:
        return [e.message for e in effects if isinstance(e, Send) and e.peer == EVIL]

    def assert_unharmed(self) -> None:
        now = snapshot(self.outside)
        # nothing appeared or changed outside the folder
        outside_now = {k: v for k, v in now.items() if not k.startswith("folder")}
        outside_before = {
            k: v for k, v in self.before_outside.items() if not k.startswith("folder")
        }
        assert outside_now == outside_before
        assert (self.root / "keep.txt").read_bytes() == b"precious"
        assert (self.root / "sub" / "a.txt").read_bytes() == b"alpha"
        state = sorted(p.name for p in (self.root / ".syncron").iterdir())
        assert set(state) <= set(self.state_files) | {"index.db-wal", "index.db-shm"}


def record(
    path: str,
    data: bytes = b"pwned",
    *,
    kind: EntryType = EntryType.FILE,
    target: str = "",
    actor: str = "EVIL.1",
) -> Record:
    blocks = tuple(chunk_bytes(data)) if kind == EntryType.FILE else ()
    h = blake3.blake3(data if kind == EntryType.FILE else target.encode()).digest()
    return Record(
        path=path,
        type=kind,
        size=len(data) if kind == EntryType.FILE else 0,
        mode=0o644,
        content_hash=h if kind != EntryType.DIRECTORY else EMPTY_HASH,
        version=VersionVector.of({actor: 5}),
        blocks=blocks,
        target=target,
        origin=actor,
        origin_sum=5,
    )


UNSAFE = [
    "../escape.txt",
    "sub/../../escape.txt",
    "/etc/passwd",
    str(Path("/tmp") / "abs.txt"),
    ".syncron/index.db",
    ".syncron/node.key",
    "a\\b.txt",
    "nul\x00byte",
    "ctl\x01char",
    "x" * 300,
    "./dot",
    "sub//double",
    "caf\u0065\u0301.txt",  # not NFC
    "",
]


@pytest.mark.parametrize("path", UNSAFE, ids=range(len(UNSAFE)))
def test_unsafe_record_paths_close_the_channel_and_change_nothing(
    tmp_path: Path, path: str
) -> None:
    v = Victim(tmp_path)
    root_before = v.index.merkle.root()
    effects = v.send(Records(0, (record("ok.txt"), record(path)), True))
    assert v.closed
    assert v.index.merkle.root() == root_before  # not even the safe record of that message
    assert not any(isinstance(e, Send) and isinstance(e.message, BlockRequest) for e in effects)
    v.assert_unharmed()


@pytest.mark.parametrize("target", ["/etc", "../..", "sub/../../..", ".syncron", "../folder"])
def test_symlinks_pointing_outside_are_refused(tmp_path: Path, target: str) -> None:
    v = Victim(tmp_path)
    v.send(Records(0, (record("link", kind=EntryType.SYMLINK, target=target),), True))
    assert v.closed
    assert not (v.root / "link").is_symlink()
    v.assert_unharmed()


def test_a_path_through_a_local_symlink_never_writes_through_it(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    os.symlink(str(tmp_path), v.root / "door")  # a local link to outside (not synced)
    (v.root / "inner").mkdir()
    os.symlink("inner", v.root / "alias")  # a safe local link, indexed
    changed = Scanner(v.root, v.index).scan().changed
    v.feed(LocalChanges(tuple(changed)))
    data = b"through the door"
    for path in ("door/secret.txt", "alias/evil.txt"):
        effects = v.send(Records(0, (record(path, data),), True))
        for msg in v.sent(effects):
            if isinstance(msg, BlockRequest):
                effects = v.send(BlockData(msg.request_id, data))
        for _ in range(10):  # let retries run
            v.now += 5
            v.feed(Tick())
    assert (tmp_path / "secret.txt").read_bytes() == b"outside the folder"
    assert not (tmp_path / "evil.txt").exists() and not (v.root / "inner" / "evil.txt").exists()
    v.assert_unharmed()


def test_blocks_that_do_not_match_their_hash_are_never_written(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    data = random.Random(1).randbytes(200_000)
    effects = v.send(Records(0, (record("sub/new.bin", data),), True))
    requests = [m for m in v.sent(effects) if isinstance(m, BlockRequest)]
    assert requests
    v.send(BlockData(requests[0].request_id, b"\0" * requests[0].size))
    assert v.closed
    assert not (v.root / "sub" / "new.bin").exists()
    assert v.index.get("sub/new.bin") is None
    v.assert_unharmed()


def test_an_overwrite_with_a_bad_block_leaves_the_old_file_intact(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    old = v.index.get("keep.txt")
    assert old is not None
    newer = record("keep.txt", b"replacement content")
    newer = Record(
        **{
            **{f: getattr(newer, f) for f in newer.__dataclass_fields__},
            "version": old.version.merge(VersionVector.of({"EVIL.1": 9})),
        }
    )
    effects = v.send(Records(0, (newer,), True))
    (req,) = [m for m in v.sent(effects) if isinstance(m, BlockRequest)]
    v.send(BlockData(req.request_id, b"X" * req.size))
    assert v.closed
    v.assert_unharmed()


def test_requests_for_unsafe_paths_close_the_channel(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    effects = v.send(BlockRequest(1, "../secret.txt", EMPTY_HASH, 0, 10, EMPTY_HASH))
    assert v.closed
    assert not any(isinstance(m, BlockData) for m in v.sent(effects))


def test_wrong_order_and_impersonation_are_protocol_errors(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    v.send(Hello(1, 1, EVIL, "send-receive", ()))  # a second Hello
    assert v.closed
    w = Victim(tmp_path / "w")
    w.feed(PeerUp("OTHER"))
    w.feed(Received("OTHER", Root(b"\0" * 32, 0)))  # before Hello
    assert "OTHER" not in w.engine.peers
    w.feed(PeerUp("THIRD"))
    w.feed(Received("THIRD", Hello(1, 1, "SOMEONE-ELSE", "send-receive", ())))
    assert "THIRD" not in w.engine.peers  # a Hello naming another node than the channel


def test_garbage_frames_raise_only_the_protocol_error() -> None:
    rnd = random.Random(5)
    for _ in range(2000):
        decoder = codec.Decoder()
        decoder.feed(rnd.randbytes(rnd.randint(0, 64)))
        try:
            while decoder.next() is not None:
                pass
        except RemoteProtocolError:
            pass


# ------------------------------------------------------------ inline content


def test_inline_content_that_fails_its_hash_is_never_written(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    root_before = v.index.merkle.root()
    rec = record("sub/inline.txt", b"the real content")
    v.send(Records(0, (record("ok.txt"), rec), True, ((1, b"the fake content"),)))
    assert v.closed
    assert not (v.root / "sub" / "inline.txt").exists()
    assert not (v.root / "ok.txt").exists()  # nothing of that message is applied
    assert v.index.merkle.root() == root_before
    assert v.engine.stats["rejected"] == 1
    v.assert_unharmed()


@pytest.mark.parametrize(
    "rec, data",
    [
        (record("d", kind=EntryType.DIRECTORY), b"x"),  # content for a directory
        (record("s", kind=EntryType.SYMLINK, target="a"), b"a"),  # ... for a symlink
        (record("short.txt", b"12345"), b"1234"),  # not the block's size
        (record("big.bin", random.Random(2).randbytes(600_000)), b"x"),  # several blocks
    ],
    ids=["directory", "symlink", "size", "multi-block"],
)
def test_inline_content_that_does_not_fit_its_record_closes_the_channel(
    tmp_path: Path, rec: Record, data: bytes
) -> None:
    v = Victim(tmp_path)
    root_before = v.index.merkle.root()
    v.send(Records(0, (rec,), True, ((0, data),)))
    assert v.closed
    assert v.index.merkle.root() == root_before
    assert not (v.root / rec.path).exists()
    v.assert_unharmed()


def test_inline_content_is_installed_without_a_block_request(tmp_path: Path) -> None:
    v = Victim(tmp_path)
    data = b"small and inline"
    effects = v.send(Records(0, (record("sub/inline.txt", data),), True, ((0, data),)))
    assert not v.closed
    assert not any(isinstance(m, BlockRequest) for m in v.sent(effects))
    assert (v.root / "sub" / "inline.txt").read_bytes() == data
    stored = v.index.get("sub/inline.txt")
    assert stored is not None and stored.content_hash == blake3.blake3(data).digest()
    assert v.engine.stats["blocks_inline"] == 1


def test_malformed_inline_fields_are_protocol_errors() -> None:
    rec = codec.encode_record(record("a.txt", b"abc"))
    for inline in (
        [[1, b"abc"]],  # index past the records
        [[0, b"abc"], [0, b"abc"]],  # repeated index
        [[0, "abc"]],  # not bytes
        [[-1, b"abc"]],
        [[0, b"x" * (codec.MAX_INLINE + 1)]],  # larger than any block
        "not a list",
    ):
        body = msgpack.packb([10, 0, [rec], True, inline], use_bin_type=True)
        with pytest.raises(RemoteProtocolError):
            codec.decode_body(body)
