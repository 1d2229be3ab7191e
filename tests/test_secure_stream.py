"""SecureStream: the generic trio stream contract, framing, the mesh handshake
properties, and hostile bytes at every stage (Hypothesis)."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncron_p2p.crypto.noise import (
    AESGCM,
    CHACHAPOLY,
    MAX_MESSAGE,
    MESH_HANDSHAKE_LENGTHS,
    HandshakeState,
    NoiseError,
    TransportState,
    aesgcm_available,
    generate_keypair,
    mesh_choose,
    mesh_chosen,
    mesh_handshake,
    mesh_offer,
)
from syncron_p2p.node.secure_stream import SecureStream

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))


def pair(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    secret_a: bytes = SECRET,
    secret_b: bytes = SECRET,
) -> tuple[SecureStream, SecureStream]:
    left = SecureStream.mesh(a, initiator=True, static=generate_keypair(), mesh_secret=secret_a)
    right = SecureStream.mesh(b, initiator=False, static=generate_keypair(), mesh_secret=secret_b)
    return left, right


async def handshake_both(left: SecureStream, right: SecureStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.do_handshake)
        nursery.start_soon(right.do_handshake)


async def memory_maker() -> tuple[SecureStream, SecureStream]:
    # No handshake up front: it must run implicitly on first use.
    return pair(*trio.testing.memory_stream_pair())


async def memory_maker_handshaken() -> tuple[SecureStream, SecureStream]:
    streams = pair(*trio.testing.memory_stream_pair())
    await handshake_both(*streams)
    return streams


async def lockstep_maker() -> tuple[SecureStream, SecureStream]:
    # Like trio's own SSLStream tests: with no buffering at all, a waiter in
    # wait_send_all_might_not_block cannot be unclogged by a peer whose first
    # receive_some must *send* a handshake message, so handshake up front.
    streams = pair(*trio.testing.lockstep_stream_pair())
    await handshake_both(*streams)
    return streams


async def test_two_way_stream_over_memory_streams() -> None:
    await trio.testing.check_two_way_stream(memory_maker, lockstep_maker)


async def test_two_way_stream_over_memory_streams_after_handshake() -> None:
    await trio.testing.check_two_way_stream(memory_maker_handshaken, None)


async def test_two_way_stream_over_lockstep_streams() -> None:
    await trio.testing.check_two_way_stream(lockstep_maker, lockstep_maker)


async def test_large_sends_are_split_into_bounded_noise_messages() -> None:
    a, b = trio.testing.memory_stream_pair()
    sent: list[bytes] = []
    original = a.send_stream.send_all

    async def recording_send_all(data: bytes | bytearray | memoryview) -> None:
        sent.append(bytes(data))
        await original(data)

    a.send_stream.send_all = recording_send_all  # type: ignore[method-assign]
    left, right = pair(a, b)
    payload = os.urandom(300_000)
    received = bytearray()

    async def receive_all() -> None:
        while len(received) < len(payload):
            received.extend(await right.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, payload)
        nursery.start_soon(receive_all)
    assert bytes(received) == payload
    wire = b"".join(sent)
    # Walk the frames: handshake messages 1 and 3, then transport messages.
    lengths = []
    pos = 0
    while pos < len(wire):
        n = int.from_bytes(wire[pos : pos + 2], "big")
        lengths.append(n)
        pos += 2 + n
    assert pos == len(wire)
    # Message 1 carries the cipher offer, message 3 nothing.
    offer = len(mesh_offer())
    assert lengths[:2] == [MESH_HANDSHAKE_LENGTHS[0] + offer, MESH_HANDSHAKE_LENGTHS[2]]
    transport = lengths[2:]
    assert all(n <= MAX_MESSAGE for n in transport)
    assert max(transport) == MAX_MESSAGE
    assert sum(n - 16 for n in transport) == len(payload)
    assert payload not in wire and payload[:64] not in wire


# -- the transport cipher negotiated in the handshake --------------------


async def _exchange(left: SecureStream, right: SecureStream) -> None:
    """Both directions carry data (each side decrypts what the other sealed)."""
    data = os.urandom(100_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, data)
        got = bytearray()
        while len(got) < len(data):
            got += await right.receive_some()
    assert bytes(got) == data
    await right.send_all(b"back")
    assert await left.receive_some() == b"back"


@pytest.mark.skipif(not aesgcm_available(), reason="no hardware AES-GCM here")
async def test_two_nodes_with_aes_hardware_use_aesgcm() -> None:
    left, right = pair(*trio.testing.memory_stream_pair())
    await _exchange(left, right)
    assert left.cipher == right.cipher == AESGCM
    assert left.handshake_hash == right.handshake_hash


@pytest.mark.parametrize("chacha_only", ["initiator", "responder"])
async def test_a_node_without_aesgcm_gets_chachapoly(chacha_only: str) -> None:
    a, b = trio.testing.memory_stream_pair()
    only = [CHACHAPOLY]
    left = SecureStream.mesh(
        a,
        initiator=True,
        static=generate_keypair(),
        mesh_secret=SECRET,
        transport_ciphers=only if chacha_only == "initiator" else [AESGCM, CHACHAPOLY],
    )
    right = SecureStream.mesh(
        b,
        initiator=False,
        static=generate_keypair(),
        mesh_secret=SECRET,
        transport_ciphers=only if chacha_only == "responder" else [AESGCM, CHACHAPOLY],
    )
    if not aesgcm_available():  # the test still runs: both sides offer ChaChaPoly
        left._ciphers = right._ciphers = (CHACHAPOLY,)
    await _exchange(left, right)
    assert left.cipher == right.cipher == CHACHAPOLY


async def test_a_node_that_negotiates_nothing_talks_chachapoly() -> None:
    # A node that sends empty handshake payloads (no offer, no pick) gets
    # ChaChaPoly from a negotiating peer, in either role.
    for plain_initiator in (True, False):
        a, b = trio.testing.memory_stream_pair()
        keys = generate_keypair(), generate_keypair()
        plain = SecureStream(a, mesh_handshake(plain_initiator, keys[0], SECRET))
        negotiating = SecureStream.mesh(
            b, initiator=not plain_initiator, static=keys[1], mesh_secret=SECRET
        )
        left, right = (plain, negotiating) if plain_initiator else (negotiating, plain)
        await _exchange(left, right)
        assert plain.cipher == negotiating.cipher == CHACHAPOLY


def test_cipher_offers_and_picks() -> None:
    assert mesh_choose(b"", [AESGCM, CHACHAPOLY]) == CHACHAPOLY
    assert mesh_choose(b"AESGCM,ChaChaPoly", [CHACHAPOLY]) == CHACHAPOLY
    assert mesh_choose(b"AESGCM,ChaChaPoly", [AESGCM, CHACHAPOLY]) == AESGCM
    # The initiator's preference wins; unknown names are skipped.
    assert mesh_choose(b"Future,ChaChaPoly,AESGCM", [AESGCM, CHACHAPOLY]) == CHACHAPOLY
    for bad in (b"Future", b"AESGCM", "ChaChaPoly\u00e9".encode(), b"x" * 300):
        with pytest.raises(NoiseError):
            mesh_choose(bad, [CHACHAPOLY])
    assert mesh_chosen(b"", [AESGCM, CHACHAPOLY]) == CHACHAPOLY
    assert mesh_chosen(b"AESGCM", [AESGCM, CHACHAPOLY]) == AESGCM
    for bad in (b"AESGCM", b"\xff", b"Future"):
        with pytest.raises(NoiseError):
            mesh_chosen(bad, [CHACHAPOLY])


async def test_remote_static_and_handshake_hash() -> None:
    a, b = trio.testing.memory_stream_pair()
    ka, kb = generate_keypair(), generate_keypair()
    left = SecureStream.mesh(a, initiator=True, static=ka, mesh_secret=SECRET)
    right = SecureStream.mesh(b, initiator=False, static=kb, mesh_secret=SECRET)
    with pytest.raises(RuntimeError):
        _ = left.remote_static
    await handshake_both(left, right)
    assert left.remote_static == kb.public
    assert right.remote_static == ka.public
    assert left.handshake_hash == right.handshake_hash
    await left.do_handshake()  # idempotent


async def test_non_member_is_met_with_silence() -> None:
    """A responder drops a wrong-PSK message 1 without sending a single byte."""
    raw, b = trio.testing.memory_stream_pair()
    responder = SecureStream.mesh(b, initiator=False, static=generate_keypair(), mesh_secret=SECRET)
    stranger = mesh_handshake(True, generate_keypair(), OTHER_SECRET)
    message = stranger.write_message()
    await raw.send_all(len(message).to_bytes(2, "big") + message)
    with pytest.raises(NoiseError):
        await responder.do_handshake()
    # Nothing came back, and the connection is closed: EOF, not a reply.
    assert await raw.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await responder.receive_some()


async def outcome_of(stream: SecureStream, *, then_receive: bool = False) -> str:
    try:
        await stream.do_handshake()
        if then_receive:
            await stream.receive_some()
    except NoiseError:
        return "noise"
    except trio.BrokenResourceError:
        return "broken"
    return "eof" if then_receive else "ok"


async def both_outcomes(
    left: SecureStream, right: SecureStream, *, then_receive: bool = False
) -> tuple[str, str]:
    results: dict[str, str] = {}

    async def run(name: str, stream: SecureStream) -> None:
        results[name] = await outcome_of(stream, then_receive=then_receive)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "left", left)
            nursery.start_soon(run, "right", right)
    return results["left"], results["right"]


async def test_non_member_initiator_sees_only_a_closed_connection() -> None:
    left, right = pair(*trio.testing.memory_stream_pair(), secret_a=OTHER_SECRET)
    assert await both_outcomes(left, right) == ("broken", "noise")


async def test_refused_peer_key_aborts_the_handshake() -> None:
    a, b = trio.testing.memory_stream_pair()
    removed = generate_keypair()
    left = SecureStream.mesh(a, initiator=True, static=removed, mesh_secret=SECRET)
    right = SecureStream.mesh(
        b,
        initiator=False,
        static=generate_keypair(),
        mesh_secret=SECRET,
        accept_remote=lambda key: key != removed.public,
    )
    # The initiator finishes its side (XX: it sends last) but the responder
    # hangs up on it before a single transport byte.
    assert await both_outcomes(left, right, then_receive=True) == ("eof", "noise")


async def test_initiator_refusing_responder_never_sends_its_identity() -> None:
    raw_left, raw_right = trio.testing.memory_stream_pair()
    me = generate_keypair()
    left = SecureStream.mesh(
        raw_left, initiator=True, static=me, mesh_secret=SECRET, accept_remote=lambda k: False
    )
    right = mesh_handshake(False, generate_keypair(), SECRET)

    async def fake_responder() -> None:
        data = await raw_right.receive_some()
        right.read_message(data[2:])
        reply = right.write_message()
        await raw_right.send_all(len(reply).to_bytes(2, "big") + reply)
        assert await raw_right.receive_some() == b""  # no message 3

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_responder)
        with pytest.raises(NoiseError):
            await left.do_handshake()


async def test_cut_transport_frame_is_an_error() -> None:
    raw, b = trio.testing.memory_stream_pair()
    responder = SecureStream.mesh(b, initiator=False, static=generate_keypair(), mesh_secret=SECRET)
    hs = mesh_handshake(True, generate_keypair(), SECRET)

    async def attacker() -> None:
        transport = await drive_attacker_handshake(raw, hs)
        frame = frame_of(transport.encrypt(b"hello world"))
        await raw.send_all(frame[:-3])
        await raw.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker)
            with pytest.raises(NoiseError):
                await responder.receive_some()


async def test_clean_close_after_data_reads_as_end_of_stream() -> None:
    left, right = pair(*trio.testing.memory_stream_pair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, b"abc")
        assert await right.receive_some(2) == b"ab"
    await left.aclose()
    assert await right.receive_some() == b"c"
    assert await right.receive_some() == b""
    assert await right.receive_some() == b""


# ------------------------------------------------------- receive_into


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=150_000), min_size=1, max_size=6),
    small_reads=st.lists(st.integers(min_value=1, max_value=40), max_size=4),
)
def test_receive_into_appends_exactly_the_stream(sizes: list[int], small_reads: list[int]) -> None:
    """receive_into delivers the same bytes as receive_some, appended to the
    caller's buffer (after what it held), also after small receive_some reads
    left plaintext over, and returns 0 only at the end of the stream."""

    async def main() -> None:
        left, right = pair(*trio.testing.memory_stream_pair())
        payload = os.urandom(sum(sizes))
        got = bytearray(b"kept")

        async def send() -> None:
            at = 0
            for size in sizes:
                await left.send_all(payload[at : at + size])
                at += size
            await left.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            for n in small_reads:
                got += await right.receive_some(n)
            while True:
                before = len(got)
                added = await right.receive_into(got)
                assert added == len(got) - before
                if not added:
                    break
        assert bytes(got) == b"kept" + payload
        assert await right.receive_into(got) == 0  # and stays at the end

    trio.run(main)


async def test_receive_into_skips_an_empty_message_instead_of_ending() -> None:
    raw, b = trio.testing.memory_stream_pair()
    responder = SecureStream.mesh(b, initiator=False, static=generate_keypair(), mesh_secret=SECRET)
    hs = mesh_handshake(True, generate_keypair(), SECRET)

    async def peer() -> None:
        transport = await drive_attacker_handshake(raw, hs)
        await raw.send_all(frame_of(transport.encrypt(b"")))  # legal, and empty
        await trio.sleep(0.05)  # the empty one arrives alone
        await raw.send_all(frame_of(transport.encrypt(b"data")))

    got = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            assert await responder.receive_into(got) == 4
    assert got == b"data"


# ------------------------------------------------------------ hostile bytes


def frame_of(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


async def drive_attacker_handshake(raw: trio.abc.Stream, hs: HandshakeState) -> TransportState:
    """Run ``hs`` honestly over the raw end ``raw`` (length-prefixed)."""
    buf = bytearray()
    while not hs.is_finished:
        if hs.is_my_turn:
            await raw.send_all(frame_of(hs.write_message()))
        else:
            while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                buf += await raw.receive_some()
            n = int.from_bytes(buf[:2], "big")
            hs.read_message(bytes(buf[2 : 2 + n]))
            del buf[: 2 + n]
    return hs.split()


def hostile_bytes() -> st.SearchStrategy[bytes]:
    raw = st.binary(max_size=300)
    framed = st.binary(max_size=200).map(frame_of)
    long_frame = st.integers(min_value=0, max_value=0xFFFF).map(
        lambda n: n.to_bytes(2, "big") + b"\x00" * min(n, 70_000)
    )
    return st.one_of(raw, framed, long_frame, st.lists(framed, max_size=3).map(b"".join))


async def run_victim(
    victim_is_initiator: bool,
    honest_messages: int,
    honest_transport: int,
    injected: bytes,
    into: bool = False,
) -> tuple[str, bytes]:
    """Victim SecureStream vs an attacker who is honest for a while, then
    injects ``injected`` and closes. Returns how the victim ended."""
    raw, b = trio.testing.memory_stream_pair()
    victim_key = generate_keypair()
    victim = SecureStream.mesh(
        b, initiator=victim_is_initiator, static=victim_key, mesh_secret=SECRET
    )
    attacker = mesh_handshake(not victim_is_initiator, generate_keypair(), SECRET)
    received = bytearray()
    outcome = "unset"

    async def attack() -> None:
        buf = bytearray()
        done = 0
        # Honest for ``honest_messages`` messages; always read what the victim
        # sends on its turn, so a victim whose handshake is done gets data.
        while not attacker.is_finished and (done < honest_messages or not attacker.is_my_turn):
            if attacker.is_my_turn:
                await raw.send_all(frame_of(attacker.write_message()))
            else:
                while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    chunk = await raw.receive_some()
                    if not chunk:
                        return
                    buf += chunk
                n = int.from_bytes(buf[:2], "big")
                attacker.read_message(bytes(buf[2 : 2 + n]))
                del buf[: 2 + n]
            done += 1
        if attacker.is_finished:
            transport = attacker.split()
            for i in range(honest_transport):
                await raw.send_all(frame_of(transport.encrypt(bytes([i]) * 10)))
        await raw.send_all(injected)
        # Half-close and keep draining: the victim's own sends must not fail
        # because of us, so its outcome is decided by what it received.
        await raw.send_eof()
        while await raw.receive_some():
            pass

    async def defend() -> None:
        nonlocal outcome
        try:
            while True:
                if into:  # the decoder's zero-copy path
                    if not await victim.receive_into(received):
                        outcome = "eof"
                        return
                    continue
                chunk = await victim.receive_some()
                if not chunk:
                    outcome = "eof"
                    return
                received.extend(chunk)
        except NoiseError:
            outcome = "noise"
        except trio.BrokenResourceError:
            outcome = "broken"
        finally:
            await victim.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack)
            nursery.start_soon(defend)
    return outcome, bytes(received)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    victim_is_initiator=st.booleans(),
    honest_messages=st.integers(min_value=0, max_value=3),
    honest_transport=st.integers(min_value=0, max_value=2),
    injected=hostile_bytes(),
    into=st.booleans(),
)
def test_hostile_bytes_at_every_stage_end_in_the_documented_error(
    victim_is_initiator: bool,
    honest_messages: int,
    honest_transport: int,
    injected: bytes,
    into: bool,
) -> None:
    outcome, received = trio.run(
        run_victim, victim_is_initiator, honest_messages, honest_transport, injected, into
    )
    handshake_done = honest_messages >= 3 or (victim_is_initiator and honest_messages >= 2)
    if handshake_done:
        # The honest transport messages arrived intact, then the injection.
        expected = b"".join(bytes([i]) * 10 for i in range(honest_transport))
        assert received == expected
        # Only an empty injection can leave a clean end of stream.
        assert outcome == ("eof" if not injected else "noise")
    else:
        assert received == b""
        # A clean close at a message boundary during the handshake looks like
        # a peer that went away; anything else is a NoiseError.
        assert outcome == ("broken" if not injected else "noise")


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=2),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_flipped_bit_in_any_handshake_message_is_refused(
    index: int, position: int, bit: int
) -> None:
    async def main() -> str:
        raw, b = trio.testing.memory_stream_pair()
        victim_initiator = index == 1  # message 2 is read by the initiator
        victim = SecureStream.mesh(
            b, initiator=victim_initiator, static=generate_keypair(), mesh_secret=SECRET
        )
        attacker = mesh_handshake(not victim_initiator, generate_keypair(), SECRET)
        buf = bytearray()
        outcome = "none"

        async def attack() -> None:
            for i in range(3):
                if attacker.is_my_turn:
                    message = bytearray(attacker.write_message())
                    if i == index:
                        message[position % len(message)] ^= 1 << bit
                    await raw.send_all(frame_of(bytes(message)))
                    if i == index:
                        return
                else:
                    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                        buf.extend(await raw.receive_some())
                    n = int.from_bytes(buf[:2], "big")
                    attacker.read_message(bytes(buf[2 : 2 + n]))
                    del buf[: 2 + n]

        async def defend() -> None:
            nonlocal outcome
            try:
                await victim.do_handshake()
                outcome = "accepted"
            except NoiseError:
                outcome = "refused"

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                nursery.start_soon(defend)
        return outcome

    assert trio.run(main) == "refused"
