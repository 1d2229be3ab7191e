"""The node's initial scan, run in a short-lived child process.

A first scan of a large tree creates a record for every entry; Python keeps
the memory those transient objects used (heap fragmentation), so a node that
scanned 100k files itself would idle at twice the memory of one that did
not. The node therefore runs its initial scan here, in a child process whose
memory goes back to the OS when it exits, and only then opens the index
(building its merkle tree compactly from the database).

No peer is connected before the initial scan ends, so the engine needs no
``LocalChanges`` for what this scan finds: peers learn it from the merkle
roots they exchange on connect.

``python -m syncron_p2p.node.scanproc FOLDER NODE_ID [--progress]`` prints
one JSON line: ``{"changed": n, "errors": [[path, reason], ...]}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from syncron_p2p.errors import SyncronError
from syncron_p2p.index.db import Index
from syncron_p2p.index.scanner import Progress, Scanner


def spinner() -> tuple[Progress, Callable[[], None]]:
    """A rich status line for a scan on a terminal: (progress callback, stop)."""
    from rich.console import Console

    status = Console(stderr=True).status("scanning")
    status.start()

    def report(entries: int, hashed: int) -> None:
        if entries % 500 == 0:
            status.update(f"scanning: {entries} entries, {hashed / 2**20:.0f} MiB hashed")

    return report, status.stop


def main(argv: list[str]) -> int:
    folder, node_id = Path(argv[0]), argv[1]
    progress, stop = spinner() if "--progress" in argv[2:] else (None, lambda: None)
    try:
        with Index.open(folder, node_id) as index:
            # Only the count is reported: keeping every changed record of a
            # first scan would grow this process with the folder.
            result = Scanner(folder, index, progress=progress, collect_changes=False).scan()
    except SyncronError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    finally:
        stop()
    errors = [[e.path, e.reason] for e in result.errors]
    print(json.dumps({"changed": result.changed_count, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
