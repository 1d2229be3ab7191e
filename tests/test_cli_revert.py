"""`syncron-p2p revert` on a receive-only folder (no node running)."""

from __future__ import annotations

from pathlib import Path

from nodeproc import cli

from syncron_p2p.sync.conflicts import CONFLICT_MARK


def _backup_with_an_edit(tmp_path: Path) -> Path:
    """A receive-only folder with one local edit, scanned (no node running)."""
    backup = tmp_path / "backup"
    backup.mkdir()
    assert cli("init", backup, "--role", "receive-only").returncode == 0
    (backup / "notes.txt").write_text("edited on the backup")
    assert cli("scan", backup).returncode == 0
    return backup


def test_revert_sets_local_edits_aside_and_refuses_other_roles(tmp_path: Path) -> None:
    backup = _backup_with_an_edit(tmp_path)
    out = cli("revert", backup)
    assert out.returncode == 0, out.stderr
    assert "reverted notes.txt" in out.stdout
    assert not (backup / "notes.txt").exists()
    kept = [p for p in backup.iterdir() if CONFLICT_MARK in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "edited on the backup"
    again = cli("revert", backup)
    assert again.returncode == 0 and "nothing to revert" in again.stdout

    laptop = tmp_path / "laptop"
    laptop.mkdir()
    assert cli("init", laptop).returncode == 0
    refused = cli("revert", laptop)
    assert refused.returncode == 2
    assert "receive-only" in refused.stderr and "Traceback" not in refused.stderr


def test_revert_never_runs_beside_a_node_that_did_not_answer(tmp_path: Path) -> None:
    # A node busy past the control query's time looks like no node at all;
    # reverting offline beside it would run a second engine on its folder.
    from syncron_p2p.node.options import FolderLock

    backup = _backup_with_an_edit(tmp_path)
    held = FolderLock(backup)
    held.acquire()  # (what a running node holds)
    try:
        refused = cli("revert", backup)
    finally:
        held.release()
    assert refused.returncode == 2, refused.stderr
    assert "did not answer" in refused.stderr and "Traceback" not in refused.stderr
    assert (backup / "notes.txt").read_text() == "edited on the backup"
