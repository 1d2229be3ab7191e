"""One authenticated connection to a peer: reader, dispatcher and writer tasks.

The node opens a TCP stream, wraps it in a
:class:`~syncron_p2p.node.secure_stream.SecureStream`, runs the handshake
(with a timeout: a non-member gets silence) and then hands the stream to a
:class:`PeerConnection`:

* the **reader** decodes frames with :class:`~syncron_p2p.protocol.codec.Decoder`
  a few reads ahead of the **dispatcher**, which hands everything decoded so
  far to the node as one batch (so decryption overlaps applying, and a burst
  of blocks is applied, and made durable, together), in order, through the
  node's callback (which feeds the engine);
* the **writer** drains this connection's outbound queue of encoded
  messages into the stream, coalescing small ones into one write.

Inbound flow control: the reader stops reading when READ_AHEAD decoded reads
wait for the dispatcher, so a node busy applying slows its sender by TCP.

Outbound flow control. Messages are queued synchronously (under the node's
engine lock, so their order is the engine's order) and counted in bytes.
Above :data:`HIGH_WATER` the task that produced them waits
(:meth:`PeerConnection.wait_writable`) until the queue falls under
:data:`LOW_WATER` - except answers to this same peer, which the reader never
waits for: a reader that stopped reading because its own peer is slow to read
would deadlock two nodes that fetch from each other at once. Those answers are
bounded by the protocol (the engine's request window), and a queue that still
grows past :data:`HARD_LIMIT` means the peer does not read: it is closed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from syncron_p2p.crypto.noise import KeyPair, NoiseError
from syncron_p2p.errors import RemoteProtocolError
from syncron_p2p.node.secure_stream import SecureStream
from syncron_p2p.protocol.codec import Decoder
from syncron_p2p.protocol.messages import Message

log = logging.getLogger("syncron.peer")

HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024
HARD_LIMIT = 256 * 1024 * 1024
WRITE_BATCH = 512 * 1024
READ_AHEAD = 32  # decoded reads queued for the dispatcher (each at most a transport read)
DISPATCH_MAX = 1024  # messages handed to the node in one batch
HANDSHAKE_TIMEOUT = 10.0

# called with every message decoded from one read, in order
OnMessage = Callable[["PeerConnection", list[Message]], Awaitable[None]]


class PeerConnection:
    """A live, authenticated channel to ``peer_id``."""

    def __init__(
        self,
        stream: SecureStream,
        peer_id: str,
        *,
        address: str,
        initiator_id: str,
    ) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self.address = address
        self.initiator_id = initiator_id  # node id of the side that dialled
        self.connected_at = trio.current_time()
        self.bytes_in = 0
        self.bytes_out = 0
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._data = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._closing: str | None = None
        self._closed = trio.Event()
        self._cancel = trio.CancelScope()
        self._reason = ""
        self._eof = "peer closed the connection"

    def __repr__(self) -> str:
        return f"PeerConnection({self.peer_id} at {self.address})"

    # ------------------------------------------------------------ outbound

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def push(self, data: bytes) -> None:
        """Queue one encoded message (never blocks; see the module docstring)."""
        if self._closing is not None:
            return
        self._queue.append(data)
        self._queued += len(data)
        self._data.set()
        if self._queued > LOW_WATER:
            self._drained = trio.Event() if self._drained.is_set() else self._drained
        if self._queued > HARD_LIMIT:
            log.warning(
                "peer %s does not read (%d bytes queued): closing", self.peer_id, self._queued
            )
            self.abort()

    def over_high_water(self) -> bool:
        return self._queued > HIGH_WATER

    async def wait_writable(self) -> None:
        """Wait until the outbound queue is below the low-water mark (or closed)."""
        while self._queued > LOW_WATER and not self._closed.is_set():
            drained = self._drained
            with trio.move_on_after(1.0):
                await drained.wait()

    def close(self, reason: str) -> None:
        """Send what is queued, then close."""
        if self._closing is None:
            self._closing = reason
            self._data.set()

    def abort(self) -> None:
        """Close at once, dropping whatever is queued."""
        self._closing = self._closing or "aborted"
        self._queue.clear()
        self._queued = 0
        self._drained.set()
        self._cancel.cancel()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------- running

    async def run(self, on_message: OnMessage) -> str:
        """Run reader and writer until either ends; return why it ended."""
        self._reason = "connection closed"
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    send, receive = trio.open_memory_channel[list[Message]](READ_AHEAD)
                    nursery.start_soon(self._guarded, self._writer(), nursery.cancel_scope)
                    nursery.start_soon(self._read_ahead, send, nursery.cancel_scope)
                    await self._guarded(self._dispatcher(receive, on_message), nursery.cancel_scope)
        finally:
            self._queue.clear()
            self._queued = 0
            self._drained.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await self.stream.aclose()
            self._closed.set()
        return self._closing or self._reason

    async def _guarded(self, work: Awaitable[str | None], scope: trio.CancelScope) -> None:
        """Run reader or writer; a broken channel ends both, quietly."""
        try:
            reason = await work
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"connection lost ({exc})"
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
        if reason:
            self._reason = reason
        scope.cancel()

    async def _read_ahead(
        self, out: trio.MemorySendChannel[list[Message]], scope: trio.CancelScope
    ) -> None:
        """The reader. At the end of the stream it closes ``out`` and lets the
        dispatcher hand over what is still queued (a last message, a goodbye);
        a broken channel ends everything at once."""
        try:
            self._eof = await self._reader(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._reason = f"connection lost ({exc})"
            scope.cancel()
        except RemoteProtocolError as exc:
            self._reason = f"protocol error: {exc}"
            scope.cancel()

    async def _reader(self, out: trio.MemorySendChannel[list[Message]]) -> str:
        """Decrypt and decode, READ_AHEAD reads ahead of the dispatcher."""
        decoder = Decoder()
        async with out:
            while True:
                received = await self.stream.receive_into(decoder.writable())
                if not received:
                    return "peer closed the connection"
                self.bytes_in += received
                batch: list[Message] = []
                while (msg := decoder.next()) is not None:
                    batch.append(msg)
                if batch:
                    await out.send(batch)

    async def _dispatcher(
        self, messages: trio.MemoryReceiveChannel[list[Message]], on_message: OnMessage
    ) -> str:
        """Hand everything decoded so far to the node as one batch, in order.

        While the node applies one batch, the reader goes on decrypting and
        decoding the next (and the node then takes all of it at once).
        """
        async for batch in messages:
            while True:
                try:
                    batch.extend(messages.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if len(batch) >= DISPATCH_MAX:
                    break
            await on_message(self, batch)
        return self._eof  # the reader reached the end of the stream

    async def _writer(self) -> str | None:
        while True:
            if not self._queue:
                if self._closing is not None:
                    return None
                self._data = trio.Event()
                await self._data.wait()
                continue
            batch = [self._queue.popleft()]
            size = len(batch[0])
            while self._queue and size + len(self._queue[0]) <= WRITE_BATCH:
                item = self._queue.popleft()
                batch.append(item)
                size += len(item)
            payload = batch[0] if len(batch) == 1 else b"".join(batch)
            await self.stream.send_all(payload)
            self.bytes_out += size
            self._queued -= size
            if self._queued <= LOW_WATER:
                self._drained.set()


async def handshake(
    tcp: trio.abc.Stream,
    *,
    initiator: bool,
    static: KeyPair,
    mesh_secret: bytes,
    accept_remote: Callable[[bytes], bool],
    limit: float = HANDSHAKE_TIMEOUT,
) -> SecureStream | None:
    """Run the mesh handshake over ``tcp``; the secure stream, or None on failure.

    Failure (timeout, a stranger, a refused key, a broken transport) closes
    ``tcp``; the reason is logged at debug level only, as a stranger must
    learn nothing and an operator gains little from it.
    """
    secure = SecureStream.mesh(
        tcp,
        initiator=initiator,
        static=static,
        mesh_secret=mesh_secret,
        accept_remote=accept_remote,
    )
    ok = False
    try:
        with trio.move_on_after(limit):
            await secure.do_handshake()
            ok = True
        if not ok:
            log.debug("handshake timed out")
    except (NoiseError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("handshake failed: %s", exc.__class__.__name__)
    except OSError as exc:
        log.debug("handshake failed: %s", exc)
    finally:
        if not ok:  # (cancelled too: the node stopping must not leak the socket)
            await close_quietly(secure)
    return secure if ok else None


async def close_quietly(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` even while being cancelled, giving up after a second."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        await stream.aclose()
