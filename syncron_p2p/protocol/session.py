"""The per-peer session state machine (explicit states, transitions as data).

A session starts when a secure channel is up. Both sides send :class:`Hello`
first; the session is ACTIVE once the peer's Hello has been accepted (common
protocol version, matching authenticated node id). Anything else before
that, or anything after CLOSED, is a protocol violation.
"""

from __future__ import annotations

import enum

from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.protocol.messages import (
    FEATURES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    Message,
)


class SessionState(enum.Enum):
    AWAIT_HELLO = "await-hello"  # our Hello is sent, theirs not yet received
    ACTIVE = "active"
    CLOSED = "closed"


# Which message types each state accepts, and the state each one leads to.
TRANSITIONS: dict[SessionState, dict[type, SessionState]] = {
    SessionState.AWAIT_HELLO: {Hello: SessionState.ACTIVE, Goodbye: SessionState.CLOSED},
    SessionState.ACTIVE: {Goodbye: SessionState.CLOSED},  # others: stay ACTIVE; Hello: error
    SessionState.CLOSED: {},
}


class Session:
    """One peer's session: version negotiation and message admission."""

    def __init__(self, local_node_id: str, peer_id: str, role: str) -> None:
        self.peer_id = peer_id
        self.state = SessionState.AWAIT_HELLO
        self.version = 0
        self.peer_role = ""
        self.peer_features: frozenset[str] = frozenset()
        self.hello = Hello(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, local_node_id, role, FEATURES)

    def admit(self, msg: Message) -> None:
        """Check ``msg`` is allowed now and apply its state transition."""
        table = TRANSITIONS[self.state]
        kind = type(msg)
        if self.state == SessionState.CLOSED:
            raise RemoteProtocolError("message after the session closed")
        if self.state == SessionState.AWAIT_HELLO and kind not in table:
            raise RemoteProtocolError(f"{kind.__name__} before Hello")
        if self.state == SessionState.ACTIVE and kind is Hello:
            raise RemoteProtocolError("second Hello")
        if isinstance(msg, Hello):
            self._negotiate(msg)
        self.state = table.get(kind, self.state)

    def _negotiate(self, hello: Hello) -> None:
        if hello.node_id != self.peer_id:
            raise RemoteProtocolError("Hello names a different node than the channel authenticated")
        if hello.min_version > hello.max_version:
            raise RemoteProtocolError("Hello has an empty version range")
        chosen = min(PROTOCOL_VERSION, hello.max_version)
        if chosen < max(MIN_PROTOCOL_VERSION, hello.min_version):
            raise RemoteProtocolError(
                f"no common protocol version (we speak {MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION},"
                f" the peer {hello.min_version}-{hello.max_version})"
            )
        self.version = chosen
        self.peer_role = hello.role
        self.peer_features = frozenset(hello.features)

    def close(self) -> None:
        self.state = SessionState.CLOSED

    @property
    def active(self) -> bool:
        return self.state == SessionState.ACTIVE
