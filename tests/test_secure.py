"""`.secure` files: sealed objects, key-holders and nodes without the key (issue 7)."""

from __future__ import annotations

import os
import random
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3
import pytest
from securemesh import RealNode, SecureMesh, footprint

from syncron_p2p.crypto.sealed import (
    SealError,
    SealKeys,
    block_at,
    open_block,
    open_bytes,
    plain_offset,
    plain_size,
    seal_block,
    seal_bytes,
)
from syncron_p2p.index.blocks import chunk_bytes
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import SEAL_OVERHEAD, EntryType, Record, entry_digest, mint
from syncron_p2p.index.secure_rules import SecurePatterns
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import Records
from syncron_p2p.sync.effects import LocalChanges, PeerUp

KEY = bytes(range(32))
OTHER = bytes(32)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ------------------------------------------------------------- sealed.py


def test_seal_is_deterministic_and_authenticated() -> None:
    keys = SealKeys.derive(KEY)
    block = b"tax papers " * 1000
    a, b = seal_block(keys, block), seal_block(SealKeys.derive(KEY), block)
    assert a == b and len(a) == len(block) + SEAL_OVERHEAD
    assert block not in a and b"tax papers" not in a
    assert seal_block(SealKeys.derive(OTHER), block) != a
    assert open_block(keys, a) == block
    for pos in (0, 23, 24, 100, len(a) - 1):  # nonce, body and tag
        bad = bytearray(a)
        bad[pos] ^= 1
        with pytest.raises(SealError):
            open_block(keys, bytes(bad))
    with pytest.raises(SealError):
        open_block(SealKeys.derive(OTHER), a)
    with pytest.raises(SealError):
        open_block(keys, a[:40])


def test_sealed_object_offsets_and_roundtrip() -> None:
    keys = SealKeys.derive(KEY)
    plain = payload(1, 3 * 1024 * 1024)
    cuts = chunk_bytes(plain)
    assert len(cuts) > 3
    sealed, digest = seal_bytes(keys, plain, cuts)
    assert digest.size == len(sealed) == len(plain) + SEAL_OVERHEAD * len(cuts)
    assert digest.content_hash == blake3.blake3(sealed).digest()
    assert plain_size(digest.blocks) == len(plain)
    for i, (pb, cb) in enumerate(zip(cuts, digest.blocks, strict=True)):
        assert cb.size == pb.size + SEAL_OVERHEAD
        assert plain_offset(i, cb) == pb.offset
        assert block_at(digest.blocks, cb.offset, cb.size) == i
        assert blake3.blake3(sealed[cb.offset : cb.offset + cb.size]).digest() == cb.hash
    assert block_at(digest.blocks, 1, digest.blocks[0].size) is None
    assert open_bytes(keys, sealed, digest.blocks) == plain
    assert seal_bytes(SealKeys.derive(KEY), plain, cuts) == (sealed, digest)


def test_secure_patterns() -> None:
    pats = SecurePatterns("keys/\n*.kdbx\n!public.kdbx\n/tax/*.pdf\n")
    assert pats.protects("keys/id_ed25519")
    assert pats.protects("keys/deep/x")
    assert pats.protects("a/b/passwords.kdbx")
    assert not pats.protects("public.kdbx")
    assert pats.protects("tax/2025.pdf")
    assert not pats.protects("other/tax/2025.pdf")
    assert not pats.protects("readme.md")
    assert not pats.protects(".secure")
    assert not SecurePatterns(None) and not SecurePatterns("# nothing\n")


# ------------------------------------------------------- record, wire, db


def sealed_record() -> Record:
    _, digest = seal_bytes(SealKeys.derive(KEY), b"x" * 100, chunk_bytes(b"x" * 100))
    return mint(
        "keys/a",
        EntryType.FILE,
        None,
        "n1.e1",
        size=digest.size,
        mode=0o644,
        content_hash=digest.content_hash,
        blocks=digest.blocks,
        sealed=True,
    )


def test_sealed_is_part_of_digest_wire_and_index(tmp_path: Path) -> None:
    rec = sealed_record()
    plain = replace(rec, sealed=False)
    assert entry_digest(rec) != entry_digest(plain)
    msg = Records(1, (rec, plain), True)
    back = codec.decode_body(codec.encode(msg)[codec.HEADER :])
    assert isinstance(back, Records)
    assert back.records[0].sealed and not back.records[1].sealed
    assert back.records == (rec, plain)
    assert len(codec.encode_record(plain)) == 11 and len(codec.encode_record(rec)) == 12
    bad = codec.encode_record(rec)
    bad[5] = True  # a deleted record cannot be sealed
    bad[10] = b""
    with pytest.raises(Exception, match="sealed"):
        codec.decode_record(bad)
    with Index.open(tmp_path, "n1") as index:
        index.put([rec, replace(plain, path="keys/b")])
        got = index.get("keys/a")
        assert got is not None and got.sealed and got.blocks == rec.blocks
        assert index.known("keys")["keys/a"][8] == 1
        root = index.merkle.root()
    with Index.open(tmp_path, "n1") as index:
        assert index.merkle.root() == root


def test_schema_v1_database_migrates(tmp_path: Path) -> None:
    with Index.open(tmp_path, "n1") as index:
        index.put([replace(sealed_record(), sealed=False)])
        root = index.merkle.root()
    db = next((tmp_path / ".syncron").glob("*.db"))
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE records DROP COLUMN sealed")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with Index.open(tmp_path, "n1") as index:
        got = index.get("keys/a")
        assert got is not None and not got.sealed
        assert index.merkle.root() == root
        index.put([sealed_record()])
        got = index.get("keys/a")
        assert got is not None and got.sealed


# ------------------------------------------------------------ the mesh

SECRETS = {
    "keys/id_ed25519": payload(10, 5_000) + b"-----BEGIN OPENSSH PRIVATE KEY-----",
    "tax/2025.pdf": payload(11, 2_500_000) + b"TAXPAPER-PLAINTEXT-MARKER",
    "vault.kdbx": b"PASSWORD-DB-MARKER " * 20_000,
}
PUBLIC = {"readme.md": b"hello, not a secret\n", "photos/a.jpg": payload(12, 400_000)}


def needles(data: bytes) -> list[bytes]:
    """Slices of a plaintext to search for (start, middle, end, and strided)."""
    out = [data[:32], data[-32:], data[len(data) // 2 : len(data) // 2 + 32]]
    out.extend(data[i : i + 32] for i in range(0, len(data) - 32, max(1, len(data) // 50)))
    return [n for n in out if len(n) == 32]


def assert_no_plaintext(folder: Path, plaintexts: list[bytes]) -> None:
    files = footprint(folder)
    assert any(".syncron" in str(f) for f in files)
    wanted = [n for p in plaintexts for n in needles(p)]
    for f in files:
        blob = f.read_bytes()
        for n in wanted:
            assert n not in blob, f"plaintext found in {f.relative_to(folder)}"


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    m = SecureMesh(tmp_path, [KEY, KEY, None])
    yield m
    m.close()


def populate(m: SecureMesh) -> None:
    m.write(0, ".secure", b"# protected\nkeys/\n*.kdbx\n/tax/\n")
    for rel, data in {**SECRETS, **PUBLIC}.items():
        m.write(0, rel, data)
    m.connect_all()
    m.run()


def test_three_nodes_one_without_the_key(mesh: SecureMesh) -> None:
    populate(mesh)
    assert len(mesh.roots()) == 1 and mesh.converged()
    keyless = mesh.node(2)
    for i in (0, 1):
        for rel, data in {**SECRETS, **PUBLIC}.items():
            assert (mesh.node(i).folder / rel).read_bytes() == data
    for rel, data in PUBLIC.items():
        assert (keyless.folder / rel).read_bytes() == data
    for rel, data in SECRETS.items():
        rec = keyless.index.get(rel)
        assert rec is not None and rec.sealed
        stored = (keyless.folder / rel).read_bytes()
        assert stored != data and len(stored) == rec.size
        assert open_bytes(SealKeys.derive(KEY), stored, rec.blocks) == data
        same = mesh.node(0).index.get(rel)
        assert same is not None and entry_digest(same) == entry_digest(rec)  # identical records
    # edits on both key-holders, a rename, a new protected file
    edited = {
        "tax/2025.pdf": SECRETS["tax/2025.pdf"][:1_000_000]
        + b"EDITED-TAX-MARKER"
        + SECRETS["tax/2025.pdf"][1_000_000:],
        "keys/new_key": b"NEW-KEY-MARKER " * 300,
    }
    mesh.write(0, "tax/2025.pdf", edited["tax/2025.pdf"])
    mesh.write(1, "keys/new_key", edited["keys/new_key"])
    os.rename(mesh.node(1).folder / "vault.kdbx", mesh.node(1).folder / "keys" / "vault.kdbx")
    mesh.scan(1)
    mesh.run()
    assert len(mesh.roots()) == 1 and mesh.converged()
    final = {**SECRETS, **edited}
    final["keys/vault.kdbx"] = final.pop("vault.kdbx")
    for rel, data in final.items():
        assert (mesh.node(0).folder / rel).read_bytes() == data
        assert (mesh.node(1).folder / rel).read_bytes() == data
        rec = keyless.index.get(rel)
        assert rec is not None and rec.sealed
    assert not (keyless.folder / "vault.kdbx").exists()
    assert_no_plaintext(keyless.folder, list(final.values()) + list(SECRETS.values()))
    # a keyless rescan changes nothing
    before = mesh.roots()
    mesh.scan(2)
    assert mesh.roots() == before


def test_adding_a_pattern_protects_existing_files(mesh: SecureMesh) -> None:
    populate(mesh)
    doc = b"DIARY-MARKER " * 5000
    mesh.write(1, "diary.txt", doc)
    mesh.run()
    assert (mesh.node(2).folder / "diary.txt").read_bytes() == doc
    mesh.write(1, ".secure", b"keys/\n*.kdbx\n/tax/\ndiary.txt\n")
    mesh.run()
    mesh.scan(0)  # key-holders rescan after .secure arrives (the node's watcher does this)
    mesh.run()
    rec = mesh.node(2).index.get("diary.txt")
    assert rec is not None and rec.sealed and len(mesh.roots()) == 1
    assert (mesh.node(0).folder / "diary.txt").read_bytes() == doc
    stored = (mesh.node(2).folder / "diary.txt").read_bytes()
    assert b"DIARY-MARKER" not in stored
    # removing the pattern does not unseal what exists (explicit: recreate it)
    mesh.write(1, ".secure", b"keys/\n*.kdbx\n/tax/\n")
    mesh.run()
    mesh.scan(0)
    mesh.scan(1)
    mesh.run()
    rec = mesh.node(2).index.get("diary.txt")
    assert rec is not None and rec.sealed


def test_keyless_node_cannot_edit_or_delete(mesh: SecureMesh) -> None:
    populate(mesh)
    keyless = mesh.node(2)
    root = keyless.index.merkle.root()
    # an edit of the ciphertext is not published
    path = keyless.folder / "vault.kdbx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    mesh.scan(2)
    assert keyless.index.merkle.root() == root
    assert any("vault.kdbx" in e and "without the secure key" in e for e in keyless.scan_errors)
    # a new file at a protected path is not published either
    mesh.write(2, "keys/planted", b"PLANTED")
    assert keyless.index.get("keys/planted") is None
    # the next key-holder version replaces the bad copy
    mesh.write(0, "vault.kdbx", b"PASSWORD-DB-V2 " * 1000)
    mesh.run()
    assert len(mesh.roots()) == 1
    rec = keyless.index.get("vault.kdbx")
    assert rec is not None
    assert open_bytes(SealKeys.derive(KEY), path.read_bytes(), rec.blocks) == (
        b"PASSWORD-DB-V2 " * 1000
    )
    # a deletion is not published: the file is restored
    (keyless.folder / "keys" / "id_ed25519").unlink()
    mesh.scan(2)
    mesh.run()
    assert len(mesh.roots()) == 1
    assert (mesh.node(0).folder / "keys" / "id_ed25519").read_bytes() == SECRETS["keys/id_ed25519"]
    assert (keyless.folder / "keys" / "id_ed25519").exists()


def test_flipped_byte_on_keyless_node_is_detected(mesh: SecureMesh) -> None:
    populate(mesh)
    keyless = mesh.node(2)
    rel = "tax/2025.pdf"
    path = keyless.folder / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # A hostile (or buggy) keyless node publishes its altered ciphertext as a
    # new version: block hashes match, so only the key can tell.
    old = keyless.index.get(rel)
    assert old is not None
    forged_digest = codec_blocks(bytes(data), old)
    forged = mint(
        rel,
        EntryType.FILE,
        old,
        keyless.index.actor,
        size=len(data),
        mode=old.mode,
        content_hash=blake3.blake3(bytes(data)).digest(),
        blocks=forged_digest,
        sealed=True,
        fingerprint=None,
    )
    stored = keyless.index.put([forged])
    mesh._feed(keyless.name, LocalChanges(tuple(stored)))
    mesh.run(seconds=60)
    for i in (0, 1):
        node = mesh.node(i)
        assert (node.folder / rel).read_bytes() == SECRETS[rel]
        assert any(n.kind == "tampered" and n.path == rel for n in node.notices)
        # no temp holds plaintext either
        assert_no_plaintext_tmp(node.folder)
    # key-holders re-issued the genuine version: everyone converges on it
    assert len(mesh.roots()) == 1 and mesh.converged()
    rec = keyless.index.get(rel)
    assert rec is not None and rec.content_hash == old.content_hash
    assert open_bytes(SealKeys.derive(KEY), path.read_bytes(), rec.blocks) == SECRETS[rel]


def codec_blocks(data: bytes, like: Record) -> tuple:  # type: ignore[type-arg]
    """The block list of ``data`` cut where ``like``'s blocks are."""
    return tuple(
        replace(b, hash=blake3.blake3(data[b.offset : b.offset + b.size]).digest())
        for b in like.blocks
    )


def assert_no_plaintext_tmp(folder: Path) -> None:
    tmp = folder / ".syncron" / "tmp"
    for f in footprint(tmp):
        blob = f.read_bytes()
        assert b"TAXPAPER-PLAINTEXT-MARKER" not in blob


def test_conflict_copies_of_protected_files_are_sealed(mesh: SecureMesh) -> None:
    populate(mesh)
    mesh.links.clear()  # partition
    mesh.write(0, "vault.kdbx", b"VERSION-A-MARKER " * 2000)
    mesh.write(1, "vault.kdbx", b"VERSION-B-MARKER " * 2000)
    mesh.connect_all()
    mesh.run()
    assert len(mesh.roots()) == 1 and mesh.converged()
    copies = [r for r in mesh.node(2).index.all() if "sync-conflict" in r.path and not r.deleted]
    assert len(copies) == 1 and copies[0].sealed
    contents = set()
    for i in (0, 1):
        folder = mesh.node(i).folder
        contents.add(((folder / "vault.kdbx").read_bytes(), (folder / copies[0].path).read_bytes()))
    assert len(contents) == 1
    (main, copy) = contents.pop()
    assert {main, copy} == {b"VERSION-A-MARKER " * 2000, b"VERSION-B-MARKER " * 2000}
    assert_no_plaintext(mesh.node(2).folder, [main, copy])


def test_key_holders_serve_from_the_kept_sealed_object(tmp_path: Path) -> None:
    m = SecureMesh(tmp_path, [KEY, KEY, None])
    try:
        m.write(0, ".secure", b"*.kdbx\n")
        data = payload(20, 1_500_000)
        m.write(0, "a.kdbx", data)
        rec = m.node(0).index.get("a.kdbx")
        assert rec is not None and rec.sealed
        kept = m.node(0).folder / ".syncron" / "tmp" / f"{rec.content_hash.hex()}.part"
        assert blake3.blake3(kept.read_bytes()).digest() == rec.content_hash
        # a damaged kept object is never served: the block is sealed again
        raw = bytearray(kept.read_bytes())
        raw[10] ^= 1
        kept.write_bytes(bytes(raw))
        m.connect_all()
        m.run()
        assert len(m.roots()) == 1 and m.converged()
        assert (m.node(1).folder / "a.kdbx").read_bytes() == data
        got = m.node(1).folder / ".syncron" / "tmp" / f"{rec.content_hash.hex()}.part"
        assert blake3.blake3(got.read_bytes()).digest() == rec.content_hash
        # a new version drops the old kept object on both key-holders
        m.write(1, "a.kdbx", data + b"more")
        m.run()
        assert len(m.roots()) == 1
        assert not got.exists() and not kept.exists()
        assert (m.node(0).folder / "a.kdbx").read_bytes() == data + b"more"
        assert not any(n.kind == "tampered" for i in (0, 1) for n in m.node(i).notices)
    finally:
        m.close()


def test_invite_secure_makes_a_key_holder(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from syncron_p2p.commands import mesh as mesh_commands
    from syncron_p2p.crypto.invite import decode_invite
    from syncron_p2p.index.scanner import Scanner
    from syncron_p2p.mesh import Mesh
    from syncron_p2p.node.disk import RealDisk
    from syncron_p2p.node.runner import Node, NodeConfig
    from syncron_p2p.sync.sealed_disk import SealedDisk

    app = typer.Typer(no_args_is_help=True, add_completion=False)
    mesh_commands.register(app)

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.stdout
        return result.stdout

    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    run("init", str(a))
    secure_code = run("invite", str(a), "--secure").strip()
    plain_code = run("invite", str(a)).strip()
    assert decode_invite(secure_code).secure_key == Mesh.load(a).secure_key is not None
    assert decode_invite(plain_code).secure_key is None
    assert "holds the secure key" in run("init", str(b), "--code", secure_code)
    assert "holds the secure key" not in run("init", str(c), "--code", plain_code)
    assert Mesh.load(b).secure_key == Mesh.load(a).secure_key
    assert Mesh.load(c).secure_key is None
    # a keyless node cannot hand the key on
    result = CliRunner().invoke(app, ["invite", str(c), "--secure"])
    assert result.exit_code != 0
    for folder, holder in ((b, True), (c, False)):
        (folder / ".secure").write_bytes(b"*.key\n")
        (folder / "x.key").write_bytes(b"KEY-MARKER")
        mesh = Mesh.load(folder)
        node = Node(mesh, NodeConfig(folder=folder, listen=("127.0.0.1", 0), mdns=False))
        try:
            assert isinstance(node.disk, SealedDisk) == holder
            assert isinstance(node.disk, RealDisk) == (not holder)
            # every scanner of the folder (node, child scan, `scan`) seals on a key-holder
            result = Scanner(folder, node.index).scan()
            rec = node.index.get("x.key")
            if holder:
                assert rec is not None and rec.sealed and not result.errors
            else:
                assert rec is None and result.errors  # cannot seal: not published
        finally:
            node.index.close()


def test_a_read_given_its_record_needs_no_lookup() -> None:
    from syncron_p2p.sync.memory_disk import MemoryDisk
    from syncron_p2p.sync.sealed_disk import SealedDisk

    inner = MemoryDisk()
    inner.write("keys/a", b"x" * 100)
    rec = sealed_record()

    def lookup(path: str) -> Record | None:
        raise AssertionError("the record was given: no index lookup")

    disk = SealedDisk(inner, KEY, lookup)
    sealed = disk.read_block("keys/a", 0, rec.blocks[0].size, rec)
    assert sealed is not None
    assert blake3.blake3(sealed).digest() == rec.blocks[0].hash  # the sealed block
    with pytest.raises(AssertionError):
        disk.read_block("keys/a", 0, rec.blocks[0].size)  # without it: looked up


def test_a_block_of_an_ordinary_file_is_read_without_a_record() -> None:
    from syncron_p2p.sync.memory_disk import MemoryDisk
    from syncron_p2p.sync.sealed_disk import SealedDisk

    inner = MemoryDisk()
    inner.write("notes.txt", b"plain text " * 10)
    inner.write("keys/a", b"x" * 100)
    rec = sealed_record()
    looked_up: list[str] = []

    def lookup(path: str) -> Record | None:
        looked_up.append(path)
        return rec if path == "keys/a" else None

    disk = SealedDisk(inner, KEY, lookup, sealed=lambda p: p == "keys/a")
    assert disk.read_block("notes.txt", 0, 11) == b"plain text "
    assert looked_up == []
    sealed = disk.read_block("keys/a", 0, rec.blocks[0].size)
    assert sealed is not None and blake3.blake3(sealed).digest() == rec.blocks[0].hash
    assert looked_up == ["keys/a"]


def test_a_plan_forgotten_while_its_job_waited_never_installs_ciphertext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sealed disk remembers a bounded number of planned sealed temps. A
    # job that waited long (its batch flushing, many others started since)
    # could find its plan dropped; installed as an ordinary temp, the sealed
    # object became the key-holder's "plaintext" file. The engine says the
    # plan again right before each install.
    from syncron_p2p.sync import sealed_disk

    monkeypatch.setattr(sealed_disk, "MAX_PLANNED", 2)
    m = SecureMesh(tmp_path, [KEY, KEY])
    try:
        src, dst = m.node(0), m.node(1)
        (src.folder / ".secure").write_bytes(b"*.kdbx\n")
        want = {f"v/f{i}.kdbx": f"secret plaintext {i}\n".encode() for i in range(12)}
        for rel, data in want.items():
            (src.folder / rel).parent.mkdir(exist_ok=True)
            (src.folder / rel).write_bytes(data)
        m.scan(0)
        m.connect_all()
        m.run()
        assert m.converged()
        for rel, data in want.items():
            assert (dst.folder / rel).read_bytes() == data
    finally:
        m.close()


def _newly_protected(mesh: SecureMesh, rel: str, data: bytes) -> RealNode:
    """Everyone has ``rel`` in plaintext; then the node without the key adds
    a ``.secure`` pattern for it (no key-holder has sealed it yet). That node."""
    populate(mesh)
    mesh.write(1, rel, data)
    mesh.run()
    mesh.write(2, ".secure", b"keys/\n*.kdbx\n/tax/\n" + rel.encode() + b"\n")
    return mesh.node(2)


def test_an_edit_on_a_keyless_node_is_kept_when_the_next_version_replaces_it(
    mesh: SecureMesh,
) -> None:
    # .secure gains a pattern for a file everyone has in plaintext; before a
    # key-holder seals it, the user of a node without the key edits it. That
    # edit cannot be published (the node cannot seal), and the key-holder's
    # sealed version replaces the file - but the edit is kept for its owner.
    keyless = _newly_protected(mesh, "diary.txt", b"dear diary, day one\n")
    mesh.write(2, "diary.txt", b"dear diary, the keyless node's own day two\n")
    assert any("diary.txt" in e and "kept as" in e for e in keyless.scan_errors)
    mesh.run()
    mesh.scan(0)  # a key-holder seals it (the node's watcher does this when .secure arrives)
    mesh.run()
    rec = keyless.index.get("diary.txt")
    assert rec is not None and rec.sealed and len(mesh.roots()) == 1
    assert b"own day two" not in (keyless.folder / "diary.txt").read_bytes()
    kept = list((keyless.folder / ".syncron" / "damaged").iterdir())
    assert [p.read_bytes() for p in kept] == [b"dear diary, the keyless node's own day two\n"]
    assert kept[0].name == "diary.txt.unsynced"


def test_a_keyless_edit_is_kept_once_and_only_its_latest_version(
    mesh: SecureMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scans that find nothing new keep nothing new (a file a new pattern
    # protects was hashed again at every scan, and copied each time), and a
    # file edited again replaces its earlier kept copy: one per path.
    from syncron_p2p.index import scanner as scanner_module

    copies: list[str] = []
    real = scanner_module.keep_copy_of

    def counting(folder: Path, rel: str, source: str, **kwargs: Any) -> str:
        copies.append(rel)
        return real(folder, rel, source, **kwargs)

    monkeypatch.setattr(scanner_module, "keep_copy_of", counting)
    keyless = _newly_protected(mesh, "notes.txt", b"v1\n" * 1000)
    damaged = keyless.folder / ".syncron" / "damaged"
    mesh.write(2, "notes.txt", b"edit one\n")
    for _ in range(3):
        mesh.scan(2)
    assert copies == ["notes.txt"]
    assert [p.read_bytes() for p in damaged.iterdir()] == [b"edit one\n"]
    mesh.write(2, "notes.txt", b"edit two, on top\n")
    mesh.scan(2)
    assert [p.read_bytes() for p in damaged.iterdir()] == [b"edit two, on top\n"]


def test_a_keyless_edit_that_cannot_be_kept_is_not_replaced(
    mesh: SecureMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncron_p2p.index import scanner as scanner_module

    keyless = _newly_protected(mesh, "notes.txt", b"v1\n")

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scanner_module, "keep_copy_of", full)
    mesh.write(2, "notes.txt", b"the keyless user's edit\n")
    assert any("could not keep a copy" in e for e in keyless.scan_errors)
    mesh.run(seconds=30)  # .secure reaches the key-holders
    mesh.scan(0)  # one seals it: its version must not replace the edit
    mesh.run(seconds=30)
    rec = mesh.node(0).index.get("notes.txt")
    assert rec is not None and rec.sealed
    assert (keyless.folder / "notes.txt").read_bytes() == b"the keyless user's edit\n"
    monkeypatch.undo()  # the disk has room again: the next scan keeps it, then it goes
    mesh.scan(2)
    mesh.run()
    kept = keyless.folder / ".syncron" / "damaged" / "notes.txt.unsynced"
    assert kept.read_bytes() == b"the keyless user's edit\n"
    assert (keyless.folder / "notes.txt").read_bytes() != b"the keyless user's edit\n"


def test_kept_copies_of_different_paths_never_share_a_name(tmp_path: Path) -> None:
    from syncron_p2p.folder import keep_copy_of, state_dir

    folder = tmp_path / "f"
    (folder / "keys" / "a").mkdir(parents=True)
    state_dir(folder)
    long = "keys/" + "n" * 200 + ".txt"  # named by a hash of its path: chosen to match it
    short = blake3.blake3(long.encode()).hexdigest(length=16) + ".txt"
    paths = ["keys/a%", "keys/a/25", "keys/a%2F", "keys%2Fa%25", "keys/a/%", long, short]
    for rel in paths:
        (folder / rel).write_bytes(f"edit of {rel}".encode())
    for rel in paths:  # the latest edit of each path, one copy per path
        keep_copy_of(folder, rel, str(folder / rel), suffix="unsynced")
    kept = {p.name: p.read_bytes() for p in (folder / ".syncron" / "damaged").iterdir()}
    assert sorted(kept.values()) == sorted(f"edit of {rel}".encode() for rel in paths)
    assert kept["keys%2Fa%25.unsynced"] == b"edit of keys/a%"


def test_kept_copies_follow_no_symlink_and_keep_only_what_was_seen(tmp_path: Path) -> None:
    import errno

    from syncron_p2p.folder import keep_copy_of, state_dir

    folder = tmp_path / "f"
    folder.mkdir()
    state_dir(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "a.txt").write_bytes(b"one")
    assert keep_copy_of(folder, "a.txt", str(folder / "a.txt")) == ".syncron/damaged/a.txt.1"
    assert keep_copy_of(folder, "a.txt", str(folder / "a.txt")) == ".syncron/damaged/a.txt.2"
    (folder / "a.txt").write_bytes(b"two")
    where = keep_copy_of(folder, "a.txt", str(folder / "a.txt"), suffix="unsynced")
    (folder / "a.txt").write_bytes(b"three")
    assert keep_copy_of(folder, "a.txt", str(folder / "a.txt"), suffix="unsynced") == where
    damaged = folder / ".syncron" / "damaged"
    assert sorted((p.name, p.read_bytes()) for p in damaged.iterdir()) == [
        ("a.txt.1", b"one"),
        ("a.txt.2", b"one"),
        ("a.txt.unsynced", b"three"),
    ]
    st = os.stat(folder / "a.txt")
    with pytest.raises(OSError) as stale:
        keep_copy_of(folder, "a.txt", str(folder / "a.txt"), same_as=(st.st_size + 1, 0, 0))
    assert stale.value.errno == errno.ESTALE
    (outside / "secret").write_bytes(b"not the folder's")
    os.symlink(outside / "secret", folder / "link")
    with pytest.raises(OSError):
        keep_copy_of(folder, "link", str(folder / "link"))  # (a symlink is not read through)
    for p in damaged.iterdir():
        p.unlink()
    damaged.rmdir()
    os.symlink(outside, damaged)  # planted: the copy must not land outside
    with pytest.raises(OSError):
        keep_copy_of(folder, "a.txt", str(folder / "a.txt"))
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.parametrize("again", [False, True])
def test_a_keyless_users_file_at_a_protected_path_gives_way_to_the_mesh_and_is_kept(
    mesh: SecureMesh, again: bool
) -> None:
    # The user of the node without the key creates a file at a protected
    # path (or creates it again after deleting the mesh's) while a key-holder
    # creates the same path. The node cannot publish it (it cannot seal) and
    # its index does not know it, so the mesh's version could never be
    # installed: the node retried and rescanned at every interval, for ever
    # (found by review). Now the user's bytes are kept aside, where the
    # notice says, and the mesh's version takes the path.
    populate(mesh)
    keyless = mesh.node(2)
    rel = "keys/new-key" if not again else "keys/id_ed25519"
    if again:
        (keyless.folder / rel).unlink()
        mesh.scan(2)  # (restored from the mesh; the user deletes it before that)
    (keyless.folder / rel).write_bytes(b"the keyless user's own file")
    mesh.scan(2)
    assert keyless.index.get(rel) is None or not again
    mesh.write(0, rel, b"the key-holder's version " * 100)  # (theirs)
    mesh.run(seconds=300)
    assert len(mesh.roots()) == 1 and mesh.converged()
    rec = keyless.index.get(rel)
    assert rec is not None and rec.sealed
    theirs = b"the key-holder's version " * 100
    sealed = (keyless.folder / rel).read_bytes()
    assert open_bytes(SealKeys.derive(KEY), sealed, rec.blocks) == theirs
    kept = [n for n in keyless.notices if n.kind == "kept" and n.path == rel]
    assert kept, [(n.kind, n.path, n.detail) for n in keyless.notices][-5:]
    copies = list((keyless.folder / ".syncron" / "damaged").iterdir())
    assert [c.read_bytes() for c in copies] == [b"the keyless user's own file"]
    assert str(copies[0].name) in kept[-1].detail
    rescans = sum(1 for n in keyless.notices if n.path == rel and "rescanning" in n.detail)
    assert rescans <= 2


def _damaged(node: RealNode) -> list[Path]:
    where = node.folder / ".syncron" / "damaged"
    return sorted(where.iterdir()) if where.exists() else []


def _keyless_file_at(mesh: SecureMesh, rel: str, data: bytes) -> RealNode:
    """The node without the key, whose user made ``rel`` (a protected path) there."""
    populate(mesh)
    keyless = mesh.node(2)
    (keyless.folder / rel).write_bytes(data)
    mesh.scan(2)  # (not recorded: not synced)
    return keyless


def test_a_keyless_users_file_that_cannot_be_replaced_is_kept_once_and_said(
    mesh: SecureMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (Found by review.) The install over the kept file fails (a read-only
    # directory, say): a copy was kept at every retry (78 copies, 21 MB in
    # 120 s), silently. Now one copy (not copied again while the file is
    # the one kept), and an error notice each time the install fails.
    from syncron_p2p.sync.disk import DiskFailure

    rel = "keys/new-key"
    keyless = _keyless_file_at(mesh, rel, b"mine " * 10000)
    real = keyless.raw.install_file

    def failing(path: str, key: str, size: int, mode: int, expect: Any) -> Any:
        if path == rel and expect is not None:
            raise DiskFailure(f"cannot install {path}: Permission denied")
        return real(path, key, size, mode, expect)

    monkeypatch.setattr(keyless.raw, "install_file", failing)
    mesh.write(0, rel, b"the key-holder's version " * 100)
    mesh.run(seconds=300)
    assert [c.read_bytes() for c in _damaged(keyless)] == [b"mine " * 10000]
    errors = [n for n in keyless.notices if n.kind == "error" and n.path == rel]
    assert errors and "Permission denied" in errors[0].detail  # (said, not silent)
    monkeypatch.setattr(keyless.raw, "install_file", real)
    mesh.run(seconds=3000)
    assert mesh.converged()
    assert [c.read_bytes() for c in _damaged(keyless)] == [b"mine " * 10000]


def test_a_keyless_users_file_still_growing_is_kept_once_per_version(
    mesh: SecureMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (Found by review.) The user is still copying a big file in: it changed
    # between the copy and the install. A copy per version it had when a
    # retry found it (each complete then), never one per retry, and never
    # one copy replacing another (a later review: that lost other files).
    rel = "keys/new-key"
    keyless = _keyless_file_at(mesh, rel, b"part " * 10000)
    target = keyless.folder / rel
    real = keyless.raw.keep_copy
    grow = {"n": 0}

    def keep_then_grow(path: str, expect: Any) -> Any:
        out = real(path, expect)
        if path == rel and grow["n"] < 5:
            grow["n"] += 1
            with open(target, "ab") as fh:
                fh.write(b"part " * 10000)
        return out

    monkeypatch.setattr(keyless.raw, "keep_copy", keep_then_grow)
    mesh.write(0, rel, b"the key-holder's version " * 100)
    mesh.run(seconds=600)
    assert mesh.converged()
    copies = [c.read_bytes() for c in _damaged(keyless)]
    assert b"part " * 60000 in copies  # the whole file
    assert len(copies) <= grow["n"] + 1
    assert all(c == b"part " * (10000 * (len(c) // 50000)) for c in copies)


def test_a_keyless_node_that_lost_its_index_keeps_no_copy_of_the_meshs_own_files(
    tmp_path: Path,
) -> None:
    # (Found by review.) Its protected files already are the mesh's sealed
    # objects, byte for byte: recorded as they are, nothing kept aside.
    import shutil

    m = SecureMesh(tmp_path, [KEY, None, None])
    try:
        m.write(0, ".secure", b"# protected\nkeys/\n*.kdbx\n/tax/\n")
        for rel, data in SECRETS.items():
            m.write(0, rel, data)
        m.links |= {("node0", "node1"), ("node1", "node0")}
        m._feed("node0", PeerUp("node1"))
        m._feed("node1", PeerUp("node0"))
        m.run()
        n1, n2 = m.node(1), m.node(2)
        for rel in [".secure", *SECRETS]:
            (n2.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(n1.folder / rel, n2.folder / rel)
        m.scan(2)
        m.connect_all()
        m.run(seconds=300)
        assert m.converged()
        for rel in SECRETS:
            assert (n2.folder / rel).read_bytes() == (n1.folder / rel).read_bytes()
        assert not _damaged(n2)
    finally:
        m.close()


def test_a_keyless_users_file_where_the_mesh_needs_a_directory_is_kept_and_gives_way(
    mesh: SecureMesh,
) -> None:
    # (Found by review, not new.) The user of the node without the key made a
    # file at keys/sub (protected: not synced); a key-holder makes keys/sub/x.
    # The install needs a directory there: it failed at every retry, for ever.
    keyless = _keyless_file_at(mesh, "keys/sub", b"the keyless user's file")
    theirs = b"the key-holder's file below " * 50
    mesh.write(0, "keys/sub/x", theirs)
    mesh.run(seconds=300)
    assert len(mesh.roots()) == 1 and mesh.converged()
    rec = keyless.index.get("keys/sub/x")
    assert rec is not None and rec.sealed
    sealed = (keyless.folder / "keys" / "sub" / "x").read_bytes()
    assert open_bytes(SealKeys.derive(KEY), sealed, rec.blocks) == theirs
    assert [c.name for c in _damaged(keyless)] == ["keys%2Fsub.1"]
    assert _damaged(keyless)[0].read_bytes() == b"the keyless user's file"
    assert [n for n in keyless.notices if n.kind == "kept" and n.path == "keys/sub"]


def test_a_fifo_at_a_protected_path_on_a_keyless_node_blocks_nothing(mesh: SecureMesh) -> None:
    # (Found by review.) A special file there was taken for a file to keep:
    # opening a FIFO to copy it blocked the engine, and the node, for ever.
    populate(mesh)
    keyless = mesh.node(2)
    os.mkfifo(keyless.folder / "keys" / "new-key")
    mesh.scan(2)
    mesh.write(0, "keys/new-key", b"the key-holder's version " * 100)
    mesh.write(0, "after.txt", b"later changes still arrive")
    mesh.run(seconds=300)
    assert (keyless.folder / "after.txt").read_bytes() == b"later changes still arrive"
    assert not _damaged(keyless)


def test_a_keyless_users_files_made_again_at_one_path_are_all_kept(mesh: SecureMesh) -> None:
    # (Found by review.) Kept once, the path deleted by the mesh, a new file
    # made there and kept in turn: one copy per path replaced the first.
    keyless = _keyless_file_at(mesh, "keys/new-key", b"USER KEY ONE")
    mesh.write(0, "keys/new-key", b"the key-holder's version " * 100)
    mesh.run(seconds=300)
    (mesh.node(0).folder / "keys" / "new-key").unlink()
    mesh.scan(0)
    mesh.run(seconds=300)
    assert not (keyless.folder / "keys" / "new-key").exists()
    (keyless.folder / "keys" / "new-key").write_bytes(b"USER KEY TWO")
    mesh.scan(2)
    mesh.write(0, "keys/new-key", b"the key-holder's second version " * 100)
    mesh.run(seconds=300)
    assert mesh.converged()
    kept = sorted(c.read_bytes() for c in _damaged(keyless))
    assert kept == [b"USER KEY ONE", b"USER KEY TWO"]
