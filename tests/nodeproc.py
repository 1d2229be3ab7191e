"""Helpers to run real ``syncron-p2p`` processes in tests (127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-c", "from syncron_p2p.cli import main; main()"]
# Fast timers so a test converges in seconds (hidden join options).
FAST = [
    "--anti-entropy",
    "1",
    "--heartbeat",
    "0.5",
    "--peer-timeout",
    "4",
    "--scan-interval",
    "2",
    "--max-backoff",
    "1",
]


def cli(
    *args: str | Path, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=check
    )


class NodeProc:
    """One ``syncron-p2p join`` process; its stdout is read until it listens."""

    def __init__(
        self,
        folder: Path,
        *args: str,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.args = list(args)
        self.log = folder.parent / f"{folder.name}.log"
        self._stderr = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*prefix, *CLI, "join", str(folder), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.tail = ""  # stdout left unread when the node stopped
        self.port = 0
        self.invite: str | None = None

    def wait_listening(self, timeout: float = 30) -> int:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip("\n"))
                if "invite code:" in line:
                    self.invite = line.rsplit(":", 1)[1].strip()
                if line.startswith("listening on "):
                    self.port = int(line.rsplit(":", 1)[1])
                    return self.port
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"node on {self.folder} did not start: {self.lines} {self.stderr()}")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        out = cli("status", self.folder, "--json", timeout=20)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node on {self.folder} ignored signal {sig}") from None
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.tail = self.proc.stdout.read()
            self.proc.stdout.close()
        self._stderr.close()
        return rc


def tree(folder: Path) -> dict[str, tuple[str, Any]]:
    """Path -> (kind, content/target/None, exec bit) for everything but .syncron."""
    out: dict[str, tuple[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".syncron"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            try:
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("dir", None)
                else:
                    out[rel] = ("file", (p.read_bytes(), bool(st.st_mode & stat.S_IXUSR)))
            except (FileNotFoundError, NotADirectoryError):
                # A running node moved it between the listing and the look
                # (a conflict copy set aside before the winner lands): the
                # snapshot is simply incomplete, and callers poll again.
                out[rel] = ("vanished", None)
    return out


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_node(procs: list[NodeProc], folder: Path, *args: str) -> NodeProc:
    """Start a fast-timer node on 127.0.0.1 (no mDNS) and wait until it listens."""
    folder.mkdir(exist_ok=True)
    node = NodeProc(folder, "--listen", "127.0.0.1:0", "--no-mdns", *FAST, *args)
    procs.append(node)
    node.wait_listening()
    return node
