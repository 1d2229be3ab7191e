"""``syncron-p2p verify``: damaged files are found, reported, and restored from peers.

"Damaged" means the bytes changed while the file's fingerprint (size, mtime,
inode, ctime) stayed the recorded one - bit rot, or a wrong write by an
earlier version. No test can write a file without changing its ctime, so
the tests damage a file and then record its new fingerprint in the index,
which is the very state such damage leaves.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from securemesh import SecureMesh
from test_node_parts import _config, _pair, _start_pair, until

from syncron_p2p.crypto.sealed import SealKeys
from syncron_p2p.errors import InternalError
from syncron_p2p.index.blocks import hash_file
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import StatFingerprint
from syncron_p2p.index.scanner import Scanner
from syncron_p2p.index.verify import content_hash, page_after, to_verify, verify_files
from syncron_p2p.mesh import Mesh
from syncron_p2p.node import control
from syncron_p2p.node.runner import Node
from syncron_p2p.sync.effects import Damaged

CLI = [sys.executable, "-c", "from syncron_p2p.cli import main; main()"]
KEY = bytes(range(32))


def _damage(folder: Path, index: Index, path: str, data: bytes) -> None:
    """Write ``data`` over ``path`` and record the result's fingerprint as if
    nothing had happened (what bit rot leaves: a fingerprint that matches)."""
    (folder / path).write_bytes(data)
    st = os.lstat(folder / path)
    rec = index.get(path)
    assert rec is not None
    fp = StatFingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    index.put([replace(rec, fingerprint=fp)])


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread: the nodes it talks to run on this event loop."""
    return await trio.to_thread.run_sync(
        lambda: subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    )


def _scanned(folder: Path, files: dict[str, bytes], key: bytes | None = None) -> Index:
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    index = Index.open(folder, "NODE")
    Scanner(folder, index, secure_key=key).scan()
    return index


def test_verify_hashes_content_as_the_scanner_records_it(tmp_path: Path) -> None:
    rnd = random.Random(5)
    for size in (0, 1, 65_535, 65_536, 4 * 2**20 + 1, 11 * 2**20):
        path = tmp_path / f"f{size}"
        path.write_bytes(rnd.randbytes(size))
        recorded = hash_file(path)
        assert content_hash(str(path)) == recorded.content_hash, size
        assert size < 2**20 or len(recorded.blocks) > 1  # (the many-block case is covered)


def test_verify_tells_damage_from_edits(tmp_path: Path) -> None:
    big = random.Random(1).randbytes(3_000_000)
    index = _scanned(
        tmp_path,
        {"big.bin": big, "docs/a.txt": b"alpha", "docs/b.txt": b"beta", "empty": b""},
    )
    records = to_verify(index.all())
    assert sorted(r.path for r in records) == ["big.bin", "docs/a.txt", "docs/b.txt", "empty"]
    clean = verify_files(tmp_path, records)
    assert clean.checked == 4 and not clean.damaged and clean.changed == 0
    assert clean.checked_bytes == len(big) + 9

    _damage(tmp_path, index, "big.bin", big[:1000] + b"\0" * 10 + big[1010:])
    (tmp_path / "docs" / "b.txt").write_bytes(b"an edit")  # fingerprint changes
    result = verify_files(tmp_path, to_verify(index.all()))
    assert [r.path for r in result.damaged] == ["big.bin"]
    assert result.changed == 1 and result.checked == 3  # the edit is not damage
    # Read only: the damaged file is left as it is.
    assert (tmp_path / "big.bin").read_bytes()[1000:1010] == b"\0" * 10
    index.close()


def test_verify_checks_protected_files_as_their_sealed_records(tmp_path: Path) -> None:
    index = _scanned(
        tmp_path,
        {".secure": b"*.kdbx\n", "vault.kdbx": b"secret" * 1000, "plain.txt": b"open"},
        key=KEY,
    )
    sealed = index.get("vault.kdbx")
    assert sealed is not None and sealed.sealed
    keys = SealKeys.derive(KEY)
    clean = verify_files(tmp_path, to_verify(index.all()), keys)
    assert clean.checked == 3 and not clean.damaged
    _damage(tmp_path, index, "vault.kdbx", b"SECRET" * 1000)
    assert [r.path for r in verify_files(tmp_path, to_verify(index.all()), keys).damaged] == [
        "vault.kdbx"
    ]
    index.close()


def test_verify_pages_through_the_whole_index(tmp_path: Path) -> None:
    index = _scanned(tmp_path, {f"d/f{i:03d}.txt": b"%d" % i for i in range(25)})
    seen: list[str] = []
    after = None
    while page := page_after(index, after, limit=7):
        after = page[-1].path
        seen.extend(r.path for r in page)
    assert seen == sorted(r.path for r in index.all())
    index.close()


async def test_a_running_node_restores_damaged_files_from_its_peer(tmp_path: Path) -> None:
    ma, mb = _pair(tmp_path)
    big = random.Random(2).randbytes(2_500_000)
    (ma.folder / "photos").mkdir()
    (ma.folder / "photos" / "big.jpg").write_bytes(big)
    (ma.folder / "notes.txt").write_bytes(b"fine")
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        await until(lambda: (mb.folder / "notes.txt").exists() and b.engine.jobs == {}, 30)
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 30)
        assert a.listen_address is not None
        port = a.listen_address[1]
        await b.stop()
        before = a.index.get("photos/big.jpg")
        # While b is stopped, its copy rots: one bad stretch in the middle.
        damaged = big[:1_200_000] + b"\xff" * 64 + big[1_200_064:]
        with Index.open(mb.folder, mb.node_id) as index:
            _damage(mb.folder, index, "photos/big.jpg", damaged)
        # With no node running, verify reports it and changes nothing.
        offline = await _cli("verify", str(mb.folder))
        assert offline.returncode == 1, offline.stderr
        assert "damaged: photos/big.jpg" in offline.stdout
        assert "run verify again" in offline.stdout
        assert (mb.folder / "photos" / "big.jpg").read_bytes() == damaged

        b = Node(Mesh.load(mb.folder), _config(mb.folder, peers=[("127.0.0.1", port)]))
        await nursery.start(b.run)
        await until(lambda: bool(b.engine._active()), 20)
        # A scan does not notice (the fingerprint is the recorded one) ...
        await b.scan()
        assert (mb.folder / "photos" / "big.jpg").read_bytes() == damaged
        # ... verify does, through the control socket as the CLI asks it.
        reply = await _cli("verify", str(mb.folder), "--json")
        assert reply.returncode == 1, reply.stderr
        assert json.loads(reply.stdout) | {"checked_bytes": 0} == {
            "checked": 2,
            "checked_bytes": 0,
            "damaged": ["photos/big.jpg"],
            "changed": 0,
            "unreadable": [],
            "stopped": False,
            "running": True,  # the node answered, not the offline path
        }
        await until(lambda: (mb.folder / "photos" / "big.jpg").read_bytes() == big, 30)
        assert b.engine.stats["repaired"] == 1
        # Only the bad block travelled; the damage was never published, and
        # the bytes it replaced are kept where nothing syncs them.
        assert b.engine.stats["blocks_remote"] == 1
        kept = mb.folder / ".syncron" / "damaged" / "photos%2Fbig.jpg.1"
        assert kept.read_bytes() == damaged
        after = a.index.get("photos/big.jpg")
        assert before is not None and after is not None and after.version == before.version
        assert (ma.folder / "photos" / "big.jpg").read_bytes() == big
        mine = b.index.get("photos/big.jpg")
        assert mine is not None and mine.version == before.version
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 20)
        # Verified again: intact.
        again = await b.verify()
        assert again["damaged"] == [] and again["checked"] == 2
        await a.stop()
        await b.stop()


async def test_a_damaged_file_a_peer_asks_for_is_found_and_restored_by_itself(
    tmp_path: Path,
) -> None:
    # Nobody runs verify: c joins through b alone, and b, asked for blocks of
    # a file that rotted, notices (the block fails its hash), reads the file,
    # restores it from a - and c then gets it intact.
    ma, mb = _pair(tmp_path)
    big = random.Random(3).randbytes(1_500_000)
    (ma.folder / "big.bin").write_bytes(big)
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 30)
        assert a.listen_address is not None
        port_a = a.listen_address[1]
        await b.stop()
        with Index.open(mb.folder, mb.node_id) as index:
            _damage(mb.folder, index, "big.bin", big[:700_000] + b"\0" * 99 + big[700_099:])
        b = Node(Mesh.load(mb.folder), _config(mb.folder, peers=[("127.0.0.1", port_a)]))
        await nursery.start(b.run)
        assert b.listen_address is not None
        c_dir = tmp_path / "c"
        c_dir.mkdir()
        mc = Mesh.join(c_dir, ma.invite_code())
        c = Node(mc, _config(c_dir, peers=[("127.0.0.1", b.listen_address[1])]))
        await nursery.start(c.run)
        await until(lambda: (c_dir / "big.bin").exists(), 60)
        assert (c_dir / "big.bin").read_bytes() == big  # never the damaged bytes
        await until(lambda: (mb.folder / "big.bin").read_bytes() == big, 30)
        assert b.engine.stats["repaired"] == 1
        for node in (a, b, c):
            await node.stop()


def test_damaged_protected_files_are_restored_with_and_without_the_key(tmp_path: Path) -> None:
    # A key-holder keeps a .secure file in plaintext, a node without the key
    # keeps the sealed object: each verifies and repairs its own form.
    m = SecureMesh(tmp_path, [KEY, KEY, None])
    try:
        secret = random.Random(4).randbytes(900_000)
        m.write(0, ".secure", b"*.kdbx\n")
        m.write(0, "vault.kdbx", secret)
        m.connect_all()
        m.run()
        assert m.converged() and (m.node(1).folder / "vault.kdbx").read_bytes() == secret
        keyless = m.node(2).folder / "vault.kdbx"
        sealed_copy = keyless.read_bytes()
        assert secret[:64] not in sealed_copy
        roots = m.roots()
        # A node without the key cannot seal an edit of a protected file: it
        # keeps the record beside the edited file. That is no damage.
        edited = m.node(2).folder / "vault.kdbx"
        edited.write_bytes(b"edited where the key is not")
        m.scan(2)
        record = m.node(2).index.get("vault.kdbx")
        assert record is not None and record.fingerprint is not None
        assert record.fingerprint.size == len(b"edited where the key is not")
        found = verify_files(m.node(2).folder, to_verify(m.node(2).index.all()))
        assert not found.damaged and found.changed == 1
        edited.write_bytes(sealed_copy)  # (back as it was, for the repairs below)
        m.scan(2)
        for i, keys in ((1, SealKeys.derive(KEY)), (2, None)):
            node = m.node(i)
            good = (node.folder / "vault.kdbx").read_bytes()
            _damage(node.folder, node.index, "vault.kdbx", good[:400_000] + b"!" + good[400_001:])
            found = verify_files(node.folder, to_verify(node.index.all()), keys)
            assert [r.path for r in found.damaged] == ["vault.kdbx"]
            m._feed(node.name, Damaged(tuple(found.damaged)))
            m.run()
            assert (node.folder / "vault.kdbx").read_bytes() == good
            assert node.engine.stats["repaired"] == 1
            again = verify_files(node.folder, to_verify(node.index.all()), keys)
            assert not again.damaged and again.checked == 2
        assert m.roots() == roots
        assert (m.node(0).folder / "vault.kdbx").read_bytes() == secret
    finally:
        m.close()


async def test_control_requests_never_crash_the_node_and_verify_stops_when_its_client_goes(
    tmp_path: Path,
) -> None:
    cancelled, started = trio.Event(), trio.Event()
    calls: list[str] = []

    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request["cmd"])
        if request["cmd"] == "boom":
            raise RuntimeError("a bug")
        if request["cmd"] == "verify":
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        return {"ok": True}

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, tmp_path, handler)
        boom = await trio.to_thread.run_sync(control.query, tmp_path, {"cmd": "boom"})
        assert boom is not None and "internal error" in boom["error"]
        assert calls == ["boom"]
        # The server goes on answering.
        ok = await trio.to_thread.run_sync(control.query, tmp_path, {"cmd": "status"})
        assert ok == {"ok": True}
        # A client asks for a verify and goes away (Ctrl-C): the work stops.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(control.socket_path(tmp_path)))
            sock.sendall(b'{"cmd": "verify"}\n')
            with trio.fail_after(10):
                await started.wait()
        with trio.fail_after(10):
            await cancelled.wait()
        nursery.cancel_scope.cancel()


async def test_verify_waits_for_the_initial_scan(tmp_path: Path) -> None:
    ma, _ = _pair(tmp_path)
    node = Node(ma, _config(ma.folder))
    reply = await node._control({"cmd": "verify"})
    assert "still starting" in reply["error"]


@pytest.mark.parametrize("cmd", ["verify", "status"])  # (with and without hang-up watching)
async def test_an_engine_that_must_stop_the_node_still_does_from_a_control_request(
    tmp_path: Path, cmd: str
) -> None:
    # The runner raises InternalError when the engine failed too often; if
    # that happens while answering a request (a verify feeding Damaged), the
    # node must stop, not answer "internal error" and go on.
    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        raise InternalError("the sync engine failed 4 times in 600 s")

    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, tmp_path, handler)
            reply = await trio.to_thread.run_sync(control.query, tmp_path, {"cmd": cmd})
            assert reply is None  # no answer: the server is gone
    assert raised.group_contains(InternalError)
