"""The local control socket: ``FOLDER/.syncron/control.sock`` (owner only).

One request per connection: the client sends one JSON line (``{"cmd":
"status"}``), the node answers with one JSON line and closes. The socket is
mode 0600 inside the 0700 state directory, so only the folder's owner (and
root) can ask.

A Unix socket path is limited to ~107 bytes; for a deeply nested folder the
socket lives in ``$XDG_RUNTIME_DIR`` (or the temp directory) under a 0700
directory, named by a hash of the folder. Server and client compute the same
path (:func:`socket_path`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import blake3
import trio

from syncron_p2p.errors import InternalError, UsageError
from syncron_p2p.paths import STATE_DIR

log = logging.getLogger("syncron.control")

SOCKET_NAME = "control.sock"
MAX_PATH = 100
MAX_REQUEST = 4096
CANCEL_ON_HANGUP = {"verify"}  # requests whose work stops when the client goes away

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(folder: Path) -> Path:
    path = folder / STATE_DIR / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_PATH:
        return path
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = blake3.blake3(os.fsencode(folder)).hexdigest(length=12)
    return base / f"syncron-{os.getuid()}" / f"{digest}.sock"


async def serve(
    folder: Path, handler: Handler, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve control requests until cancelled; removes the socket afterwards."""
    path = socket_path(folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.parent.lstat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077 or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path.parent} must be a directory owned by you with mode 0700")
    path.unlink(missing_ok=True)  # stale: the caller holds the folder lock
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        inode = path.stat().st_ino
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    task_status.started(path)

    async def answer(stream: trio.SocketStream) -> None:
        await _answer(stream, handler)

    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:  # not a successor's socket
                path.unlink()


async def _answer(stream: trio.abc.Stream, handler: Handler) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(5):
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                data = await stream.receive_some(MAX_REQUEST)
                if not data:
                    break
                buf += data
        try:
            request = json.loads(buf.split(b"\n", 1)[0] or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            reply = {"error": f"bad request: {exc}"}
        else:
            try:
                if request.get("cmd") in CANCEL_ON_HANGUP:
                    reply = await _unless_hung_up(stream, handler, request)
                else:
                    reply = await handler(request)
            except InternalError:
                raise  # the engine failed too often: the node must stop (runner)
            except Exception as exc:  # a bug answering: the node goes on
                log.exception("control request %r failed", request.get("cmd"))
                reply = {"error": f"internal error: {exc}"}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _unless_hung_up(
    stream: trio.abc.Stream, handler: Handler, request: dict[str, Any]
) -> dict[str, Any]:
    """Run ``handler``, cancelled if the client goes away meanwhile (a long
    ``verify`` the user interrupted need not run to its end)."""
    reply: dict[str, Any] = {"error": "the client went away"}
    failed: Exception | None = None

    async def work() -> None:
        nonlocal reply, failed
        try:
            reply = await handler(request)
        except Exception as exc:  # (raised below as it is, not in a group)
            failed = exc
        nursery.cancel_scope.cancel()

    async def watch() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(MAX_REQUEST):
                pass  # (nothing more is expected; anything else is ignored)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        nursery.start_soon(watch)
    if failed is not None:
        raise failed
    return reply


def query(
    folder: Path, request: dict[str, Any], timeout: float | None = 5.0
) -> dict[str, Any] | None:
    """Ask the node running on ``folder``; None when none answers (``timeout``
    None: wait for the answer however long the node works on it)."""
    path = socket_path(folder)
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError:
            return None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None
