"""A node's identity, its mesh membership and its peers, kept in FOLDER/.syncron/.

Files (all owner-only, mode 0600, inside the 0700 state directory):

``node.key``
    The node's static X25519 private key, 64 hex digits and a newline. It is
    written to a temporary file created with mode 0600 from the start
    (``O_CREAT | O_EXCL``, never a chmod afterwards), fsynced and renamed into
    place. Loading refuses a key file that group or others can read.
``mesh.json``
    ``{"format": 1, "mesh_id": hex, "secret": hex, "secure_key": hex | null,
    "role": "send-receive" | "send-only" | "receive-only"}``.
``peers.json``
    ``{"format": 1, "peers": [{"node_id", "public_key", "last_address",
    "removed"}]}``: every peer whose key this node has accepted after a
    handshake, and the ones removed by the user.

Every write is atomic (temp file, fsync, rename, fsync of the directory).
Missing or corrupt files raise :class:`~syncron_p2p.errors.ConfigError` naming
the file and what is wrong.

Membership rule: any node that completes the mesh handshake (so holds the
mesh secret) is a member unless its key was removed; :meth:`Mesh.is_allowed`
answers that, and a removed key stays refused even if it still knows the
secret (see docs/security.md for what removal does not do).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from syncron_p2p.crypto.invite import MESH_ID_BYTES, SECRET_BYTES, Invite, decode_invite
from syncron_p2p.crypto.invite import encode_invite as _encode_invite
from syncron_p2p.crypto.noise import KeyPair, keypair_from_private
from syncron_p2p.errors import ConfigError, UsageError
from syncron_p2p.folder import TMP_DIR, state_dir
from syncron_p2p.ids import node_id, parse_node_id

KEY_FILE = "node.key"
MESH_FILE = "mesh.json"
PEERS_FILE = "peers.json"
FORMAT = 1
ROLES = ("send-receive", "send-only", "receive-only")
_TAG_DOMAIN = b"syncron-p2p public mesh tag v1\x00"


# ------------------------------------------------------------ file helpers


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from creation on."""
    tmp_dir = path.parent / TMP_DIR
    tmp_dir.mkdir(mode=0o700, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} is missing") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    raw = _read(path, what)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{what} {path} is corrupt (not valid JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{what} {path} is corrupt or of an unknown format")
    return data


def _hex_field(data: dict[str, Any], key: str, size: int, path: Path) -> bytes:
    value = data.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise ConfigError(f"{path} is corrupt: {key!r} is not {size} bytes of hex")
    return raw


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


# ------------------------------------------------------------------ peers


@dataclass(slots=True)
class Peer:
    """A peer this node has met: its key, id, last address, removal mark."""

    node_id: str
    public_key: bytes
    last_address: str | None = None
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "public_key": self.public_key.hex(),
            "last_address": self.last_address,
            "removed": self.removed,
        }


class Peers:
    """The peers registry (``peers.json``); every change is saved at once."""

    def __init__(self, path: Path, peers: list[Peer] | None = None) -> None:
        self.path = path
        self._by_id: dict[str, Peer] = {p.node_id: p for p in peers or []}

    @classmethod
    def load(cls, path: Path) -> Peers:
        if not path.exists():
            return cls(path)
        data = _read_json(path, "peers registry")
        entries = data.get("peers")
        if not isinstance(entries, list):
            raise ConfigError(f"peers registry {path} is corrupt: no peer list")
        peers = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise ConfigError(f"peers registry {path} is corrupt: bad entry")
            key = _hex_field(entry, "public_key", 32, path)
            address = entry.get("last_address")
            removed = entry.get("removed")
            if entry.get("node_id") != node_id(key):
                raise ConfigError(f"peers registry {path} is corrupt: node id does not match key")
            if not (address is None or isinstance(address, str)) or not isinstance(removed, bool):
                raise ConfigError(f"peers registry {path} is corrupt: bad entry")
            peers.append(Peer(node_id(key), key, address, removed))
        return cls(path, peers)

    def save(self) -> None:
        peers = [p.to_json() for p in sorted(self._by_id.values(), key=lambda p: p.node_id)]
        write_private_file(self.path, _dump({"format": FORMAT, "peers": peers}))

    def __iter__(self) -> Iterator[Peer]:
        return iter(sorted(self._by_id.values(), key=lambda p: p.node_id))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, node: str) -> Peer | None:
        return self._by_id.get(parse_node_id(node))

    def by_key(self, public_key: bytes) -> Peer | None:
        return self._by_id.get(node_id(public_key))

    def is_allowed(self, public_key: bytes) -> bool:
        """False only for a key the user removed."""
        peer = self.by_key(public_key)
        return peer is None or not peer.removed

    def accept(self, public_key: bytes, address: str | None = None) -> Peer:
        """Record the authenticated key of a peer (after a handshake).

        A removed peer stays removed: it raises :class:`UsageError`, so the
        caller must have checked :meth:`is_allowed` first.
        """
        peer = self.by_key(public_key)
        if peer is None:
            peer = Peer(node_id(public_key), bytes(public_key), address)
            self._by_id[peer.node_id] = peer
        elif peer.removed:
            raise UsageError(f"peer {peer.node_id} was removed from this mesh")
        elif address is not None:
            peer.last_address = address
        self.save()
        return peer

    def remove(self, node: str) -> Peer:
        """Mark a known peer removed (typed id, typos caught): refused from now on."""
        canonical = parse_node_id(node)
        peer = self._by_id.get(canonical)
        if peer is None:
            raise UsageError(f"no peer {canonical} is known in this mesh")
        peer.removed = True
        self.save()
        return peer


# ------------------------------------------------------------------- mesh


def _load_key(path: Path) -> KeyPair:
    raw = _read(path, "node key")
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # pragma: no cover - it was just read
        raise ConfigError(f"cannot stat node key {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"node key {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            "run chmod 600 on it"
        )
    try:
        private = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        private = b""
    if len(private) != 32:
        raise ConfigError(f"node key {path} is corrupt (expected 64 hex digits)")
    return keypair_from_private(private)


def load_or_create_identity(folder: Path, random: Callable[[int], bytes] = os.urandom) -> KeyPair:
    """This node's static key for ``folder``, created (0600) on first use.

    A node has an identity from its first scan, before it joins any mesh;
    ``init``/``join`` then adopt it, so the node id never changes.
    """
    path = state_dir(folder) / KEY_FILE
    if path.exists():
        return _load_key(path)
    static = keypair_from_private(random(32))
    write_private_file(path, static.private.hex().encode() + b"\n")
    return static


class Mesh:
    """This node's identity and mesh membership, for one folder."""

    def __init__(
        self,
        folder: Path,
        static: KeyPair,
        mesh_id: bytes,
        secret: bytes,
        secure_key: bytes | None,
        role: str,
        peers: Peers,
    ) -> None:
        self.folder = folder
        self.static = static
        self.mesh_id = mesh_id
        self.secret = secret
        self.secure_key = secure_key
        self.role = role
        self.peers = peers

    def __repr__(self) -> str:
        folder = str(self.folder)
        return f"Mesh(folder={folder!r}, node_id={self.node_id}, mesh_id={self.mesh_id.hex()})"

    @property
    def node_id(self) -> str:
        return node_id(self.static.public)

    @property
    def public_tag(self) -> str:
        """A public, non-secret tag of the mesh id (for mDNS TXT records)."""
        return blake3.blake3(_TAG_DOMAIN + self.mesh_id).hexdigest(length=8)

    def is_allowed(self, public_key: bytes) -> bool:
        """May a handshaken peer with this static key talk to us?"""
        return public_key != self.static.public and self.peers.is_allowed(public_key)

    def invite_code(self, secure: bool = False) -> str:
        """The invite code; ``secure`` adds the secure key (if this node has it)."""
        if secure and self.secure_key is None:
            raise UsageError("this node does not hold the secure key, so it cannot invite with it")
        key = self.secure_key if secure else None
        return _encode_invite(Invite(self.mesh_id, self.secret, key))

    # -- persistence -------------------------------------------------------

    @staticmethod
    def exists(folder: Path) -> bool:
        """True once the folder belongs to a mesh (an identity alone is not a mesh)."""
        return (state_dir(folder, create=False) / MESH_FILE).exists()

    @classmethod
    def create(
        cls,
        folder: Path,
        *,
        role: str = "send-receive",
        random: Callable[[int], bytes] = os.urandom,
    ) -> Mesh:
        """A new identity and a new mesh (fresh id, secret and secure key)."""
        invite = Invite(random(MESH_ID_BYTES), random(SECRET_BYTES), random(SECRET_BYTES))
        return cls._init(folder, invite, role, random)

    @classmethod
    def join(
        cls,
        folder: Path,
        code: str,
        *,
        role: str = "send-receive",
        random: Callable[[int], bytes] = os.urandom,
    ) -> Mesh:
        """A new identity joining the mesh of invite ``code`` (typos raise UsageError)."""
        return cls._init(folder, decode_invite(code), role, random)

    @classmethod
    def _init(cls, folder: Path, invite: Invite, role: str, random: Callable[[int], bytes]) -> Mesh:
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        if cls.exists(folder):
            raise UsageError(
                f"{folder} already belongs to a mesh (see {state_dir(folder, False)});"
                " refusing to replace it"
            )
        sdir = state_dir(folder)
        static = load_or_create_identity(folder, random)
        mesh = cls(
            folder,
            static,
            invite.mesh_id,
            invite.secret,
            invite.secure_key,
            role,
            Peers(sdir / PEERS_FILE),
        )
        mesh.save()
        mesh.peers.save()
        return mesh

    def save(self) -> None:
        """Write ``mesh.json`` (the key file is written once, at creation)."""
        data = {
            "format": FORMAT,
            "mesh_id": self.mesh_id.hex(),
            "secret": self.secret.hex(),
            "secure_key": self.secure_key.hex() if self.secure_key else None,
            "role": self.role,
        }
        write_private_file(state_dir(self.folder) / MESH_FILE, _dump(data))

    @classmethod
    def load(cls, folder: Path) -> Mesh:
        """The mesh of ``folder``; :class:`ConfigError` if missing or corrupt."""
        sdir = state_dir(folder, create=False)
        path = sdir / MESH_FILE
        if not path.exists():
            raise ConfigError(
                f"{folder} is not set up: no mesh in {sdir} (run `syncron-p2p init {folder}`)"
            )
        data = _read_json(path, "mesh config")
        mesh_id = _hex_field(data, "mesh_id", MESH_ID_BYTES, path)
        secret = _hex_field(data, "secret", SECRET_BYTES, path)
        secure_key = (
            None
            if data.get("secure_key") is None
            else _hex_field(data, "secure_key", SECRET_BYTES, path)
        )
        role = data.get("role")
        if role not in ROLES:
            raise ConfigError(f"mesh config {path} is corrupt: unknown role {role!r}")
        static = _load_key(sdir / KEY_FILE)
        return cls(
            folder, static, mesh_id, secret, secure_key, str(role), Peers.load(sdir / PEERS_FILE)
        )
