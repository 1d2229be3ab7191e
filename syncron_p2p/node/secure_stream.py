"""SecureStream: a Noise channel over any trio stream, as trio.SSLStream is for TLS.

Wire format (both phases): every Noise message, handshake or transport, is
sent as a 2-byte big-endian length followed by that many bytes. A transport
message is at most 65535 bytes (ciphertext including the 16-byte tag), so
:meth:`SecureStream.send_all` splits application data of any size into
plaintext pieces of at most 65519 bytes. Message boundaries carry no meaning
for the application: :meth:`SecureStream.receive_some` returns plaintext bytes
like any byte stream (the protocol layer does its own message framing).

The handshake runs on :meth:`SecureStream.do_handshake`, or implicitly on the
first :meth:`send_all` / :meth:`receive_some`. It has **no timeout of its own**:
wrap it in ``trio.move_on_after`` / ``fail_after`` (a silent responder, which is
what a non-member gets, would otherwise wait forever).

Errors, the contract callers (and the Hypothesis tests) rely on:

* :class:`~syncron_p2p.crypto.noise.NoiseError` (a
  :class:`~syncron_p2p.errors.CryptoError`): anything the peer sent is wrong —
  a handshake or transport message failed authentication, is too short or too
  long, replays or reorders a message, a peer key is low-order, the
  ``accept_remote`` callback refused the peer's key, the stream ended in the
  middle of a message, or a nonce is exhausted. The transport is closed at
  once (nothing is sent back), and every later call raises
  :class:`trio.BrokenResourceError`.
* :class:`trio.BrokenResourceError`: the transport broke, or the peer closed
  it cleanly before the handshake finished (at a message boundary: a
  responder that refused us looks exactly like a peer that went away).
* :class:`trio.ClosedResourceError`: this stream was closed locally.
* End of stream: after the handshake, a clean close by the peer at a message
  boundary makes :meth:`receive_some` return ``b""``. As with TCP, that end is
  not authenticated; the protocol layer's own framing detects a cut message.

Concurrency follows :class:`trio.abc.Stream`: one task may send while another
receives; two senders (or two receivers) raise :class:`trio.BusyResourceError`.
If a send is cancelled half way the stream is broken (the peer may hold half a
message), as with :class:`trio.SSLStream`.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import trio

from syncron_p2p.crypto.noise import (
    MAX_MESSAGE,
    MAX_PLAINTEXT,
    HandshakeState,
    KeyPair,
    NoiseError,
    TransportState,
    ciphers,
    mesh_choose,
    mesh_chosen,
    mesh_handshake,
    mesh_offer,
)

LENGTH_BYTES = 2
RECEIVE_CHUNK = 256 * 1024
SEND_BATCH = 16  # transport messages joined into one transport write (~1 MiB)

_T = TypeVar("_T")


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    BROKEN = "broken"
    CLOSED = "closed"


class _Guard:
    """Raise BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._what = what

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._what} this stream")
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


class SecureStream(trio.abc.Stream):
    """An encrypted, mutually authenticated :class:`trio.abc.Stream`.

    ``handshake`` is a fresh :class:`~syncron_p2p.crypto.noise.HandshakeState`
    (usually from :meth:`mesh`). ``accept_remote``, when given, is called with
    the peer's static public key as soon as the handshake reveals it; returning
    False aborts with :class:`NoiseError` before this side sends anything more.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        handshake: HandshakeState,
        *,
        accept_remote: Callable[[bytes], bool] | None = None,
        transport_ciphers: Sequence[str] | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._handshake = handshake
        self._accept_remote = accept_remote
        # The mesh handshake's payloads negotiate the transport cipher among
        # these (None: the handshake's own cipher, nothing negotiated).
        self._ciphers = None if transport_ciphers is None else tuple(transport_ciphers)
        self._cipher: str | None = None
        self._remote_checked = False
        self._transport: TransportState | None = None
        self._state = _State.HANDSHAKE
        self._handshake_lock = trio.Lock()
        self._send_guard = _Guard("sending on")
        self._receive_guard = _Guard("receiving from")
        self._rbuf = bytearray()
        self._wbuf: bytearray | None = None  # allocated on first send
        self._plain = bytearray()
        self._eof = False

    @classmethod
    def mesh(
        cls,
        transport_stream: trio.abc.Stream,
        *,
        initiator: bool,
        static: KeyPair,
        mesh_secret: bytes,
        accept_remote: Callable[[bytes], bool] | None = None,
        transport_ciphers: Sequence[str] | None = None,
    ) -> SecureStream:
        """A stream speaking the mesh handshake (``Noise_XXpsk0``, mesh secret as PSK).

        The transport cipher is negotiated in the handshake among
        ``transport_ciphers`` (default: every one this machine has, fastest
        first): AESGCM when both ends run it in hardware, else ChaChaPoly.
        """
        return cls(
            transport_stream,
            mesh_handshake(initiator, static, mesh_secret),
            accept_remote=accept_remote,
            transport_ciphers=ciphers() if transport_ciphers is None else transport_ciphers,
        )

    # -- what the handshake established ------------------------------------

    @property
    def handshake_done(self) -> bool:
        return self._transport is not None

    @property
    def remote_static(self) -> bytes:
        """The peer's authenticated static public key (after the handshake)."""
        if self._transport is None or self._transport.remote_static is None:
            raise RuntimeError("the handshake has not finished")
        return self._transport.remote_static

    @property
    def cipher(self) -> str:
        """The transport cipher functions in use (after the handshake)."""
        if self._transport is None:
            raise RuntimeError("the handshake has not finished")
        return self._transport.cipher

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash ``h``: unique per session, equal on both ends."""
        if self._transport is None:
            raise RuntimeError("the handshake has not finished")
        return self._transport.handshake_hash

    # -- helpers -----------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this SecureStream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this SecureStream is broken")

    async def _fail(self) -> None:
        self._state = _State.BROKEN
        await trio.aclose_forcefully(self.transport_stream)

    async def _send_raw(self, data: bytes | memoryview) -> None:
        try:
            await self.transport_stream.send_all(data)
        except trio.ClosedResourceError:
            raise
        except BaseException:
            # Cancelled or broken half way: the peer may hold part of a message.
            if self._state is not _State.CLOSED:
                self._state = _State.BROKEN
            raise

    async def _fill_frame(self) -> int | None:
        """Buffer a whole length-prefixed message at the start of ``_rbuf``.

        Returns its end offset, or None at a clean end of stream.
        """
        rbuf = self._rbuf
        while True:
            if len(rbuf) >= LENGTH_BYTES:
                end = LENGTH_BYTES + ((rbuf[0] << 8) | rbuf[1])
                if len(rbuf) >= end:
                    return end
            chunk = await self.transport_stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                if rbuf:
                    raise NoiseError  # cut in the middle of a message
                return None
            rbuf += chunk

    async def _read_frame(self) -> bytes | None:
        """The next length-prefixed message, or None at a clean end of stream."""
        end = await self._fill_frame()
        if end is None:
            return None
        body = bytes(memoryview(self._rbuf)[LENGTH_BYTES:end])
        del self._rbuf[:end]
        return body

    def _opened(self) -> bool:
        return self._transport is not None

    async def _ensure_handshake(self) -> None:
        if self._opened():
            return
        async with self._handshake_lock:
            self._check_usable()
            if self._opened():  # another task finished it meanwhile
                return
            await self._run_handshake()

    async def _run_handshake(self) -> None:
        hs = self._handshake
        index = 0
        while not hs.is_finished:
            if hs.is_my_turn:
                message = hs.write_message(self._payload(index))
                await self._send_raw(len(message).to_bytes(LENGTH_BYTES, "big") + message)
            else:
                body = await self._read_frame()
                if body is None:
                    raise trio.BrokenResourceError(
                        "peer closed the connection during the handshake"
                    )
                self._received_payload(index, hs.read_message(body))
            index += 1
            if not self._remote_checked and hs.remote_static is not None:
                self._remote_checked = True
                if self._accept_remote is not None and not self._accept_remote(hs.remote_static):
                    raise NoiseError
        transport = hs.split()
        if self._ciphers is not None:
            if self._cipher is None:  # a handshake of fewer than two messages
                raise NoiseError
            transport.use_cipher(self._cipher)
        self._transport = transport

    def _payload(self, index: int) -> bytes:
        """What handshake message ``index`` carries: the cipher offer, then the pick."""
        if self._ciphers is None or index > 1:
            return b""
        if index == 0:
            return mesh_offer(self._ciphers)
        assert self._cipher is not None  # chosen on reading message 0
        return self._cipher.encode("ascii")

    def _received_payload(self, index: int, payload: bytes) -> None:
        if self._ciphers is None or index > 1:
            return
        if index == 0:
            self._cipher = mesh_choose(payload, self._ciphers)
        else:
            self._cipher = mesh_chosen(payload, self._ciphers)
        self._state = _State.OPEN

    # -- trio.abc.Stream ---------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake now (it also runs implicitly on first use).

        Idempotent. No timeout: the caller bounds it.
        """
        try:
            await self._ensure_handshake()
        except NoiseError:
            await self._fail()
            raise
        await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            self._check_usable()
            try:
                await self._ensure_handshake()
                view = memoryview(data).cast("B")
                if not view:
                    await trio.lowlevel.checkpoint()
                    return
                transport = self._transport
                assert transport is not None
                await self._send_encrypted(transport, view)
            except NoiseError:
                await self._fail()
                raise

    async def _send_encrypted(self, transport: TransportState, view: memoryview) -> None:
        # Encrypt up to SEND_BATCH messages straight into one reused buffer
        # (length prefix, then ciphertext), and hand it to the transport in a
        # single send_all: no per-message allocation or copy. trio streams
        # copy or send the data before send_all returns, so reuse is safe.
        if self._wbuf is None:
            self._wbuf = bytearray(SEND_BATCH * (LENGTH_BYTES + MAX_MESSAGE))
        wbuf = self._wbuf
        step = MAX_PLAINTEXT
        total = len(view)
        offset = 0
        while offset < total:
            pos = 0
            for _ in range(SEND_BATCH):
                if offset >= total:
                    break
                piece = view[offset : offset + step]
                size = transport.encrypt_into(piece, wbuf, pos + LENGTH_BYTES)
                wbuf[pos] = size >> 8
                wbuf[pos + 1] = size & 0xFF
                pos += LENGTH_BYTES + size
                offset += len(piece)
            with memoryview(wbuf) as out:
                await self._send_raw(out[:pos])

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            self._check_usable()
            if self._state is not _State.OPEN:
                # The handshake (maybe running in a receiving task) owns the
                # transport; sending will start with it, so "might not block".
                await trio.lowlevel.checkpoint()
                return
            await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        return await self._receiving(lambda: self._receive_plaintext(max_bytes))

    async def receive_into(self, buf: bytearray) -> int:
        """Append the plaintext that has arrived to ``buf``; return how many bytes.

        The zero-copy sibling of :meth:`receive_some` for a reader that keeps
        its own buffer (the protocol decoder): each transport message is
        decrypted in place in the receive buffer and copied once, straight
        onto the end of ``buf``, and every message already received is taken
        in one call. Returns 0 at the end of the stream; raises like
        :meth:`receive_some`.
        """
        return await self._receiving(lambda: self._receive_into(buf))

    async def _receiving(self, receive: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``receive`` as the one receiving task, after the handshake; a
        NoiseError breaks the stream."""
        with self._receive_guard:
            self._check_usable()
            try:
                await self._ensure_handshake()
                return await receive()
            except NoiseError:
                await self._fail()
                raise

    async def _receive_into(self, buf: bytearray) -> int:
        plain = self._plain
        if plain:  # left over from a receive_some with a small max_bytes
            await trio.lowlevel.checkpoint()
            buf += plain
            added = len(plain)
            plain.clear()
            return added
        transport = self._transport
        assert transport is not None
        rbuf = self._rbuf
        added = 0
        while not added:
            if self._eof or await self._fill_frame() is None:
                self._eof = True
                await trio.lowlevel.checkpoint()
                return 0
            # Every whole message buffered: decrypt each in place, copy it out once.
            start = 0
            with memoryview(rbuf) as view:
                while len(rbuf) - start >= LENGTH_BYTES:
                    end = start + LENGTH_BYTES + ((rbuf[start] << 8) | rbuf[start + 1])
                    if end > len(rbuf):
                        break
                    size = transport.decrypt_in_place(rbuf, start + LENGTH_BYTES, end)
                    buf += view[start + LENGTH_BYTES : start + LENGTH_BYTES + size]
                    added += size
                    start = end
            del rbuf[:start]
        return added

    async def _receive_plaintext(self, max_bytes: int | None) -> bytes:
        plain = self._plain
        if plain:
            await trio.lowlevel.checkpoint()
        else:
            transport = self._transport
            assert transport is not None
            rbuf = self._rbuf
            while not plain:
                if self._eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                end = await self._fill_frame()
                if end is None:
                    self._eof = True
                    return b""
                # Decrypt in place inside the receive buffer, copy out once.
                size = transport.decrypt_in_place(rbuf, LENGTH_BYTES, end)
                with memoryview(rbuf) as view:
                    if size and (max_bytes is None or size <= max_bytes):
                        out = bytes(view[LENGTH_BYTES : LENGTH_BYTES + size])
                    else:
                        out = b""
                        plain += view[LENGTH_BYTES : LENGTH_BYTES + size]
                del rbuf[:end]
                if out:
                    return out
        if max_bytes is None or max_bytes >= len(plain):
            result = bytes(plain)
            plain.clear()
        else:
            result = bytes(memoryview(plain)[:max_bytes])
            del plain[:max_bytes]
        return result

    async def aclose(self) -> None:
        """Close this stream and its transport (idempotent, works when cancelled)."""
        self._state = _State.CLOSED
        self._plain.clear()
        await self.transport_stream.aclose()
