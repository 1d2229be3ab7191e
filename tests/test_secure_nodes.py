"""`.secure` with real node processes: two key-holders and a node without the key."""

from __future__ import annotations

from pathlib import Path

from nodeproc import NodeProc, cli, start_node, wait_for
from securemesh import footprint

SECRET = b"PASSWORD-DATABASE-PLAINTEXT " * 4000
EDITED = b"EDITED-ON-B-PLAINTEXT " * 3000


def test_real_nodes_keyless_footprint_has_no_plaintext(
    procs: list[NodeProc], tmp_path: Path
) -> None:
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    (a_dir / ".secure").write_text("*.kdbx\nprivate/\n")
    (a_dir / "vault.kdbx").write_bytes(SECRET)
    (a_dir / "private").mkdir()
    (a_dir / "private" / "notes.txt").write_bytes(EDITED[:1000])
    (a_dir / "public.txt").write_bytes(b"public\n")
    a = start_node(procs, a_dir)
    assert a.invite
    secure = cli("invite", a_dir, "--secure", check=True).stdout.strip()
    b = start_node(procs, tmp_path / "b", "--code", secure, "--peer", f"127.0.0.1:{a.port}")
    c = start_node(
        procs,
        tmp_path / "c",
        "--code",
        a.invite,
        "--peer",
        f"127.0.0.1:{a.port}",
        "--peer",
        f"127.0.0.1:{b.port}",
    )
    nodes = [a, b, c]

    def same_root() -> bool:
        roots = {n.status()["merkle_root"] for n in nodes}
        return len(roots) == 1 and all(n.status()["pending"]["files"] == 0 for n in nodes)

    def plain_on(n: NodeProc, rel: str, data: bytes) -> bool:
        p = n.folder / rel
        return p.exists() and p.read_bytes() == data

    wait_for(lambda: plain_on(b, "vault.kdbx", SECRET), 60, "the vault on b")
    wait_for(lambda: (c.folder / "vault.kdbx").exists(), 60, "the sealed vault on c")
    # b (key-holder) edits a protected file
    (b.folder / "private" / "notes.txt").write_bytes(EDITED)
    wait_for(lambda: plain_on(a, "private/notes.txt", EDITED), 60, "b's edit on a")
    wait_for(same_root, 60, "equal merkle roots")
    assert (c.folder / "public.txt").read_bytes() == b"public\n"
    for n in (a, b):
        assert (n.folder / "vault.kdbx").read_bytes() == SECRET
        assert (n.folder / "private" / "notes.txt").read_bytes() == EDITED
    for n in nodes:
        n.stop()
    needles = [SECRET[:40], SECRET[5000:5040], EDITED[:40], EDITED[20000:20040]]
    files = footprint(c.folder)
    assert any(".syncron" in str(f) for f in files)
    for f in files:
        blob = f.read_bytes()
        for needle in needles:
            assert needle not in blob, f"plaintext in {f}"
    assert "PLAINTEXT" not in c.log.read_text(errors="replace")
