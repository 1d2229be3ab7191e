"""The node's remembered options (``.syncron/node.json``) and the folder lock.

``join`` stores what it was given, so a later ``join FOLDER`` (or the
systemd unit) runs the same node: listen address, static peers, mDNS choice
and interfaces. The role lives in ``mesh.json`` (it belongs to the mesh
membership). Timing knobs are not remembered: they are for tests.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncron_p2p.errors import ConfigError, UsageError
from syncron_p2p.folder import state_dir
from syncron_p2p.mesh import write_private_file

OPTIONS_FILE = "node.json"
LOCK_FILE = "node.lock"
DEFAULT_PORT = 22100
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
FORMAT = 1


def parse_hostport(
    text: str, *, what: str = "address", default_port: int | None = None
) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) or a one-line :class:`UsageError`."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise UsageError(f"{what} {text!r} is not HOST:PORT")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535 or not host:
        raise UsageError(f"{what} {text!r} is not HOST:PORT with a port in 0-65535")
    return host, port


@dataclass(slots=True)
class StoredOptions:
    listen: str = DEFAULT_LISTEN
    peers: list[str] = field(default_factory=list)
    mdns: bool = True
    mdns_interfaces: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "listen": self.listen,
            "peers": self.peers,
            "mdns": self.mdns,
            "mdns_interfaces": self.mdns_interfaces,
        }


def load_options(folder: Path) -> StoredOptions:
    path = state_dir(folder, create=False) / OPTIONS_FILE
    if not path.exists():
        return StoredOptions()
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"node options {path} are unreadable or corrupt: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"node options {path} are corrupt or of an unknown format")
    try:
        opts = StoredOptions(
            listen=str(data["listen"]),
            peers=[str(p) for p in data["peers"]],
            mdns=bool(data["mdns"]),
            mdns_interfaces=[str(i) for i in data["mdns_interfaces"]],
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"node options {path} are corrupt: {exc}") from None
    return opts


def save_options(folder: Path, opts: StoredOptions) -> None:
    data = (json.dumps(opts.to_json(), indent=2, sort_keys=True) + "\n").encode()
    write_private_file(state_dir(folder) / OPTIONS_FILE, data)


class FolderLock:
    """An exclusive ``flock`` on ``.syncron/node.lock``: one node per folder."""

    def __init__(self, folder: Path) -> None:
        self.path = state_dir(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode().strip() or "?"
            except (OSError, UnicodeDecodeError):
                pid = "?"
            os.close(fd)
            folder = self.path.parent.parent
            raise UsageError(
                f"another syncron-p2p node (pid {pid}) is already running on {folder}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def held(folder: Path) -> bool:
        """Is a node running on ``folder`` (someone holds the lock)?"""
        path = state_dir(folder, create=False) / LOCK_FILE
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
