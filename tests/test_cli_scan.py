"""`syncron-p2p scan` as a user runs it: a real process, real folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from syncron_p2p.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_scan_json_and_list(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta!")
    (tmp_path / ".gitignore").write_text("*.tmp\n")
    (tmp_path / "junk.tmp").write_text("ignored")
    first = run("scan", str(tmp_path), "--json", "--list")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["files"] == 3 and out["directories"] == 1 and out["bytes"] == 5 + 5 + 6
    assert out["hashed_files"] == 3 and out["errors"] == []
    assert [e["path"] for e in out["entries"]] == [".gitignore", "a.txt", "sub", "sub/b.txt"]
    assert len(out["merkle_root"]) == 64
    again = json.loads(run("scan", str(tmp_path), "--json").stdout)
    assert again["hashed_files"] == 0 and again["merkle_root"] == out["merkle_root"]
    assert "entries" not in again


def test_scan_reports_skipped_entries_and_still_succeeds(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    result = run("scan", str(tmp_path), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["errors"][0]["path"] == "fifo"


def test_missing_or_non_directory_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    for target in (tmp_path / "nope", tmp_path / "file"):
        if target.name == "file":
            target.write_text("x")
        result = run("scan", str(target))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("syncron-p2p: error:")
