"""Helper process: makes empty temp files ahead of need (see ``node/temppool.py``).

Run as ``python -m syncron_p2p.node.tempmaker DIRECTORY FIRST``. It reads
lines from stdin, each a number N: "have ``pool-FIRST.part`` ...
``pool-(N-1).part`` made in DIRECTORY". It creates them, empty, in order, and
writes nothing back: the node learns what exists by trying to take a file.
It exits on end of input (the node closed the pipe or died), when it has been
asked for nothing for :data:`IDLE` seconds, or when it cannot create a file.

This module imports nothing from the package on purpose: the process starts
in milliseconds and stays small (a Raspberry Pi runs it too).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys

IDLE = 20.0  # seconds without a request before the helper ends itself
CHUNK = 16  # files made between two looks at the pipe


def pool_name(directory: str, n: int) -> str:
    """The path of pool file number ``n`` (the node's side uses the same)."""
    return f"{directory}/pool-{n}.part"


def serve(directory: str, first: int, source: int, idle: float = IDLE) -> int:
    """Make files on request until told to stop; return how many were made."""
    made = first
    want = first
    pending = b""
    while True:
        timeout = 0.0 if made < want else idle
        ready, _, _ = select.select([source], [], [], timeout)
        if ready:
            data = os.read(source, 4096)
            if not data:
                return made - first  # the node closed the pipe
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    want = max(want, int(line))
                except ValueError:
                    return made - first  # not our node talking: stop
        elif made >= want:
            return made - first  # idle for too long
        for _ in range(min(CHUNK, want - made)):
            if not _make(pool_name(directory, made)):
                return made - first  # directory gone, disk full: the node makes its own
            made += 1


def _make(path: str) -> bool:
    """Create ``path`` empty (replacing whatever is there); False if impossible."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                os.unlink(path)  # left by an earlier helper: start from nothing
            except FileNotFoundError:
                pass  # the node took it meanwhile
            except OSError:
                return False
            continue
        except OSError:
            return False
        os.close(fd)
        return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m syncron_p2p.node.tempmaker DIRECTORY FIRST", file=sys.stderr)
        return 2
    try:
        first = int(argv[2])
    except ValueError:
        print(f"not a number: {argv[2]!r}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        serve(argv[1], first, sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
