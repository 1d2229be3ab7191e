"""Real ``syncron-p2p join`` processes on 127.0.0.1 (--no-mdns, --peer), real folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from nodeproc import NodeProc, cli, start_node, tree, wait_for

pytestmark = pytest.mark.slow


def converged(folders: list[Path]) -> bool:
    trees = [tree(f) for f in folders]
    return all(t == trees[0] for t in trees[1:])


def three(procs: list[NodeProc], tmp_path: Path) -> list[NodeProc]:
    a = start_node(procs, tmp_path / "a")
    assert a.invite, a.lines
    b = start_node(procs, tmp_path / "b", "--code", a.invite, "--peer", f"127.0.0.1:{a.port}")
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
    wait_for(
        lambda: all(sum(p["connected"] for p in n.status()["peers"]) == 2 for n in nodes),
        30,
        "a full mesh of three connections",
    )
    return nodes


def test_three_nodes_converge_after_edits_on_each(procs: list[NodeProc], tmp_path: Path) -> None:
    a, b, c = three(procs, tmp_path)
    folders = [a.folder, b.folder, c.folder]
    # a: files, nested dirs, an empty dir, an executable, a symlink
    (a.folder / "docs").mkdir()
    (a.folder / "docs" / "readme.txt").write_text("v1\n")
    (a.folder / "empty").mkdir()
    (a.folder / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(a.folder / "run.sh", 0o755)
    os.symlink("docs/readme.txt", a.folder / "link")
    (a.folder / "doomed.txt").write_text("delete me\n")
    (a.folder / "old-name.txt").write_text("rename me\n")
    wait_for(lambda: converged(folders), 60, "a's creations everywhere")
    assert tree(c.folder)["run.sh"][1][1] is True  # exec bit travelled
    assert tree(b.folder)["link"] == ("link", "docs/readme.txt")
    assert tree(c.folder)["empty"] == ("dir", None)

    # b modifies and deletes, c renames and drops the exec bit
    (b.folder / "docs" / "readme.txt").write_text("v2 from b\n")
    (b.folder / "doomed.txt").unlink()
    (c.folder / "old-name.txt").rename(c.folder / "new-name.txt")
    os.chmod(c.folder / "run.sh", 0o644)
    (c.folder / "empty" / "sub").mkdir()

    def done() -> bool:
        t = tree(a.folder)
        return (
            converged(folders)
            and t.get("docs/readme.txt") == ("file", (b"v2 from b\n", False))
            and "doomed.txt" not in t
            and "old-name.txt" not in t
            and t.get("new-name.txt") == ("file", (b"rename me\n", False))
            and t["run.sh"][1][1] is False
            and t.get("empty/sub") == ("dir", None)
        )

    wait_for(done, 60, "b's and c's edits everywhere")
    # the merkle roots agree too, and every node reports its peers in sync
    wait_for(
        lambda: len({n.status()["merkle_root"] for n in (a, b, c)}) == 1,
        30,
        "equal merkle roots",
    )
    wait_for(
        lambda: all(all(p["in_sync"] for p in n.status()["peers"]) for n in (a, b, c)),
        30,
        "in_sync with every peer",
    )
    st = a.status()
    assert st["pending"] == {"files": 0, "bytes": 0}
    assert st["conflicts"] == 0
    assert {p["node_id"] for p in st["peers"]} == {b.status()["node_id"], c.status()["node_id"]}
    for n in (a, b, c):
        assert n.stop() == 0
        assert "Traceback" not in n.stderr()


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_sigterm_mid_transfer_then_restart_converges(procs: list[NodeProc], tmp_path: Path) -> None:
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    big = a_dir / "big.bin"
    with big.open("wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    want = sha(big)
    a = start_node(procs, a_dir)
    assert a.invite
    b_dir = tmp_path / "b"
    b = start_node(procs, b_dir, "--code", a.invite, "--peer", f"127.0.0.1:{a.port}")
    tmp = b_dir / ".syncron" / "tmp"

    def partial() -> bool:
        return any(p.stat().st_size > 0 for p in tmp.glob("*.part"))

    wait_for(partial, 60, "the transfer to start")
    assert b.stop(signal.SIGTERM) == 0
    assert "Traceback" not in b.stderr()
    # nothing half-written in the folder: the file is absent or complete
    target = b_dir / "big.bin"
    assert not target.exists() or sha(target) == want
    assert {p.name for p in b_dir.iterdir()} <= {".syncron", "big.bin"}

    b2 = start_node(procs, b_dir)  # remembers mesh, peers and options
    wait_for(
        lambda: target.exists() and target.stat().st_size == big.stat().st_size, 120, "big.bin"
    )
    assert sha(target) == want
    wait_for(lambda: not list(tmp.glob("*.part")), 30, "temp files cleaned up")
    assert b2.stop() == 0 and a.stop() == 0


def test_second_node_on_one_folder_and_port_in_use(procs: list[NodeProc], tmp_path: Path) -> None:
    a = start_node(procs, tmp_path / "a")
    again = cli("join", a.folder, "--no-mdns", "--listen", "127.0.0.1:0", timeout=30)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "already running" in again.stderr
    other = tmp_path / "other"
    other.mkdir()
    busy = cli("join", other, "--no-mdns", "--listen", f"127.0.0.1:{a.port}", timeout=30)
    assert busy.returncode == 2, busy.stderr
    assert "cannot listen on 127.0.0.1" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert a.stop(signal.SIGINT) == 0


def test_dead_peer_detected_by_heartbeat_then_reconnects(
    procs: list[NodeProc], tmp_path: Path
) -> None:
    """A frozen peer (SIGSTOP: no FIN, no RST) is dropped after --peer-timeout."""
    a = start_node(procs, tmp_path / "a")
    assert a.invite
    # b never scans by itself: only its periodic scan (no watcher) finds edits
    b = start_node(
        procs, tmp_path / "b", "--code", a.invite, "--peer", f"127.0.0.1:{a.port}", "--no-watch"
    )
    wait_for(lambda: any(p["connected"] for p in a.status()["peers"]), 30, "a connection")
    assert b.status()["watching"] is False
    b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not any(p["connected"] for p in a.status()["peers"]), 15, "a to drop b")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: any(p["connected"] for p in a.status()["peers"]), 30, "reconnection")
    (b.folder / "found-by-periodic-scan.txt").write_text("no watcher here\n")
    wait_for(lambda: (a.folder / "found-by-periodic-scan.txt").exists(), 30, "the periodic scan")
    assert b.stop() == 0 and a.stop() == 0


def test_sigterm_during_the_initial_scan_stops_promptly(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for d in range(300):
        sub = folder / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"{i}.txt").write_text(str(i))
    node = NodeProc(folder, "--listen", "127.0.0.1:0", "--no-mdns")
    try:
        # Python start-up, mesh creation, then the scan of 30k files, in a
        # child process: stopped while that child runs (a fixed sleep let a
        # fast machine finish the scan first).
        def scanning() -> bool:
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{node.proc.pid}/task").iterdir():
                    for child in (task / "children").read_text().split():
                        if b"scanproc" in Path(f"/proc/{child}/cmdline").read_bytes():
                            return True
            return False

        deadline = time.monotonic() + 30
        while not scanning() and time.monotonic() < deadline:
            assert node.proc.poll() is None, node.stderr()
            time.sleep(0.005)
        assert scanning(), "no scan process started"
        assert node.proc.poll() is None, node.stderr()
        start = time.monotonic()
        rc = node.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - start
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
    out = node.tail
    assert rc == 0, node.stderr()
    assert "Traceback" not in node.stderr()
    assert took < 10, f"took {took:.1f} s to stop"
    assert "listening on" not in out  # it really was still scanning
    status = cli("status", folder, "--json")
    assert json.loads(status.stdout)["running"] is False
