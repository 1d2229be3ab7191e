"""The node commands as a user runs them: errors, offline status, conflicts, service, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from nodeproc import cli

from syncron_p2p.commands.node import parse_conflict_name
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import EntryType, mint
from syncron_p2p.mesh import Mesh
from syncron_p2p.sync.conflicts import conflict_copy


def one_line_error(out: object, code: int) -> str:
    assert getattr(out, "returncode") == code, out  # noqa: B009
    err = str(getattr(out, "stderr"))  # noqa: B009
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["join", "{missing}", "--no-mdns"], 2, "does not exist"),
        (["join", "{file}", "--no-mdns"], 2, "is not a directory"),
        (["join", "{dir}", "--no-mdns", "--code", "NOT-A-CODE"], 2, "invite"),
        (["join", "{dir}", "--no-mdns", "--listen", "nowhere"], 2, "HOST:PORT"),
        (["join", "{dir}", "--no-mdns", "--role", "boss"], 2, "unknown role"),
        (["join", "{dir}", "--no-mdns", "--listen", "192.0.2.1:0"], 2, "cannot listen"),
        (["status", "{dir}"], 3, "not set up"),
        (["conflicts", "{missing}"], 2, "does not exist"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    paths = {"missing": tmp_path / "nope", "file": tmp_path / "f", "dir": tmp_path / "d"}
    out = cli(*[a.format(**paths) for a in args], timeout=60)
    err = one_line_error(out, code)
    assert message in err


def test_join_on_a_folder_of_another_mesh_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Mesh.create(a)
    other = Mesh.create(b).invite_code()
    out = cli("join", a, "--no-mdns", "--code", other)
    assert "different one" in one_line_error(out, 2)


def test_status_without_a_running_node_reads_the_database(tmp_path: Path) -> None:
    mesh = Mesh.create(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    assert cli("scan", tmp_path).returncode == 0
    out = cli("status", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["running"] is False
    assert st["node_id"] == mesh.node_id
    assert len(bytes.fromhex(st["merkle_root"])) == 32
    assert st["peers"] == []
    assert st["pending"] == {"files": 0, "bytes": 0}
    assert st["conflicts"] == 0
    with Index.open(tmp_path, mesh.node_id) as index:
        assert st["merkle_root"] == index.merkle.root().hex()
    human = cli("status", tmp_path)
    assert "not running" in human.stdout


def test_conflicts_lists_each_copy_and_its_original(tmp_path: Path) -> None:
    mesh = Mesh.create(tmp_path)
    with Index.open(tmp_path, mesh.node_id) as index:
        loser = mint(
            "docs/plan.txt",
            EntryType.FILE,
            None,
            "ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ.e1",
            size=5,
            mode=0o644,
            content_hash=b"\x01" * 32,
        )
        copy = conflict_copy(loser)
        index.put([loser, copy])
    out = cli("conflicts", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)["conflicts"]
    assert [c["path"] for c in found] == [copy.path]
    assert found[0]["conflicted_with"] == "docs/plan.txt"
    assert found[0]["original_exists"] is True
    human = cli("conflicts", tmp_path)
    assert "conflicted with docs/plan.txt" in human.stdout
    st = json.loads(cli("status", tmp_path, "--json").stdout)
    assert st["conflicts"] == 1


@pytest.mark.parametrize(
    "path", ["a.txt", "dir/notes.tar.gz", ".bashrc", "Makefile", "app.log.1", "backup.001"]
)
def test_conflict_names_parse_back(path: str) -> None:
    rec = mint(
        path,
        EntryType.FILE,
        None,
        "ABCDE-FGHJK-MNPQR-STVWX-YZ012.ep",
        size=1,
        mode=0o644,
        content_hash=bytes(range(32)),
    )
    for n in (1, 2, 17):  # (a numbered copy: the first names held other content)
        parsed = parse_conflict_name(conflict_copy(rec, n).path)
        assert parsed is not None
        assert parsed[0] == path
        assert parsed[2] == bytes(range(32)).hex()[:8]
        if n > 1:  # never the first name of another file ("a" and "a.2" are two files)
            other = replace(rec, path=f"{path}.{n}")
            assert conflict_copy(rec, n).path != conflict_copy(other).path
    assert parse_conflict_name(path) is None


def test_service_prints_a_systemd_unit(tmp_path: Path) -> None:
    out = cli("service", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[Service]" in out.stdout and "[Install]" in out.stdout
    exec_line = next(x for x in out.stdout.splitlines() if x.startswith("ExecStart="))
    assert f"join {tmp_path}" in exec_line
    assert "KillSignal=SIGTERM" in out.stdout


def test_init_role_is_stored(tmp_path: Path) -> None:
    out = cli("init", tmp_path, "--role", "receive-only")
    assert out.returncode == 0, out.stderr
    assert Mesh.load(tmp_path).role == "receive-only"


@pytest.mark.slow
def test_demo_runs_three_nodes_and_a_conflict() -> None:
    out = cli("demo", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bob: has hello.txt" in out.stdout
    assert "carol: has hello.txt" in out.stdout
    assert "both versions kept" in out.stdout
    assert "demo passed" in out.stdout


def test_watchdogs_shutdown_race_is_not_shown_but_its_real_errors_are() -> None:
    # The node's logging as the CLI sets it up, in a process of its own.
    script = (
        "import logging\n"
        "from syncron_p2p.node.logs import setup_logging\n"
        "setup_logging()\n"
        "log = logging.getLogger('watchdog.observers.inotify')\n"
        "log.error('InotifyEmitter.queue_events() called when the thread is inactive')\n"
        "log.error('a real failure')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0
    assert "a real failure" in done.stderr
    assert "inactive" not in done.stderr
