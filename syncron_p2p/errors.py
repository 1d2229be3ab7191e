"""The one error tree of syncron-p2p.

Every failure the program reports belongs to one family, and the CLI maps
families to messages and exit codes in one place (``cli.py``):

* :class:`UsageError`: the local user asked for something impossible (bad
  folder, bad invite code, port in use, a second node on one folder).
* :class:`ConfigError`: stored configuration or state is unusable.
* :class:`RemoteProtocolError`: a peer sent bytes that break the protocol.
  Hostile input may only ever raise this (h11's fuzzing invariant).
* :class:`CryptoError`: a handshake or transport message failed
  authentication. It is a :class:`RemoteProtocolError`, and it says nothing
  about *why* it failed: crypto failures tell the peer nothing.
* :class:`UnsafePathError`: a path (from a peer, the index, or the user) would
  leave the folder or touch the node's own state.
"""

from __future__ import annotations


class SyncronError(Exception):
    """Base of every error syncron-p2p raises on purpose."""


class UsageError(SyncronError):
    """Local misuse: the user asked for something that cannot be done."""


class ConfigError(SyncronError):
    """Stored configuration or node state is missing, corrupt or incompatible."""


class RemoteProtocolError(SyncronError):
    """A peer violated the protocol. The connection must be closed."""


class CryptoError(RemoteProtocolError):
    """Authentication or decryption failed. Deliberately uninformative."""


class InternalError(SyncronError):
    """A bug: the node cannot go on (after it has tried to recover)."""


class UnsafePathError(SyncronError):
    """A path is not a safe, normalised path inside the synced folder."""
