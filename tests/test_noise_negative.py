"""Hostile and broken input to the Noise engine and to SecureStream.

Every case must end in :class:`NoiseError` (the one documented error, a
``CryptoError``), never another exception, a hang, or an accepted message.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from syncron_p2p.crypto import noise
from syncron_p2p.crypto.noise import (
    MAX_MESSAGE,
    MAX_NONCE,
    MAX_PLAINTEXT,
    MESH_PROLOGUE,
    CipherState,
    HandshakeState,
    KeyPair,
    NoiseError,
    TransportState,
    dh,
    keypair_from_private,
    mesh_handshake,
)
from syncron_p2p.errors import CryptoError
from syncron_p2p.node.secure_stream import SecureStream

PSK = bytes(range(32))
WRONG_PSK = bytes(32)
INIT_STATIC = keypair_from_private(bytes([1]) * 32)
RESP_STATIC = keypair_from_private(bytes([2]) * 32)
INIT_EPHEMERAL = keypair_from_private(bytes([3]) * 32)
RESP_EPHEMERAL = keypair_from_private(bytes([4]) * 32)

# The points of small order on Curve25519 and their non-canonical encodings
# (the list libsodium and the X25519 literature reject): 0, 1, the two
# points of order 8, p-1, p, p+1, each also with the top bit set.
_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
SMALL_ORDER_POINTS = [bytes.fromhex(h) for h in _SMALL_ORDER] + [
    bytes.fromhex(h)[:31] + bytes([bytes.fromhex(h)[31] | 0x80]) for h in _SMALL_ORDER
]


def fixed(kp: KeyPair) -> Callable[[], KeyPair]:
    return lambda: kp


def make(
    name: str,
    *,
    psk_init: bytes = PSK,
    psk_resp: bytes = PSK,
    prologue_init: bytes = b"p",
    prologue_resp: bytes = b"p",
) -> tuple[HandshakeState, HandshakeState]:
    pattern = noise.parse_protocol_name(name)
    n_psk = sum(t == "psk" for m in pattern.messages for t in m)
    needs_rs = "s" in pattern.responder_pre
    init = HandshakeState(
        name,
        True,
        prologue_init,
        s=INIT_STATIC,
        rs=RESP_STATIC.public if needs_rs else None,
        psks=[psk_init] * n_psk,
        ephemeral_factory=fixed(INIT_EPHEMERAL),
    )
    resp = HandshakeState(
        name,
        False,
        prologue_resp,
        s=RESP_STATIC,
        psks=[psk_resp] * n_psk,
        ephemeral_factory=fixed(RESP_EPHEMERAL),
    )
    return init, resp


def transcript(name: str) -> list[bytes]:
    init, resp = make(name)
    out = []
    while not init.is_finished:
        sender, receiver = (init, resp) if init.is_my_turn else (resp, init)
        message = sender.write_message(b"payload")
        receiver.read_message(message)
        out.append(message)
    return out


def run_with(name: str, index: int, mutate: Callable[[bytes], bytes]) -> int:
    """Run a handshake, passing message ``index`` through ``mutate``.

    Returns the index of the message at which a NoiseError was raised (on
    either write or read); fails the test if the handshake completes.
    """
    init, resp = make(name)
    i = 0
    while not (init.is_finished and resp.is_finished):
        sender, receiver = (init, resp) if init.is_my_turn else (resp, init)
        try:
            message = sender.write_message(b"payload")
        except NoiseError:
            return i
        if i == index:
            message = mutate(message)
        try:
            receiver.read_message(message)
        except NoiseError:
            return i
        i += 1
    raise AssertionError(f"{name}: handshake accepted a mutated message {index}")


def test_noise_error_is_the_documented_crypto_error() -> None:
    assert issubclass(NoiseError, CryptoError)
    assert str(NoiseError()) == "secure channel failure"


# ------------------------------------------------------------- wrong PSK


@pytest.mark.parametrize(
    ("name", "fails_at"),
    [
        ("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b", 0),
        ("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b", 2),
        ("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", 1),
        ("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b", 0),
    ],
)
def test_wrong_psk_fails_at_the_first_message_it_protects(name: str, fails_at: int) -> None:
    init, resp = make(name, psk_resp=WRONG_PSK)
    for i in range(fails_at):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        receiver.read_message(sender.write_message())
    sender, receiver = (init, resp) if fails_at % 2 == 0 else (resp, init)
    message = sender.write_message()
    with pytest.raises(NoiseError):
        receiver.read_message(message)
    # The failed state is dead for good.
    with pytest.raises(NoiseError):
        receiver.read_message(message)
    with pytest.raises(NoiseError):
        receiver.write_message()


def test_mesh_handshake_rejects_a_non_member_at_message_one() -> None:
    stranger = mesh_handshake(True, INIT_STATIC, WRONG_PSK)
    responder = mesh_handshake(False, RESP_STATIC, PSK)
    message = stranger.write_message()
    assert len(message) == noise.MESH_HANDSHAKE_LENGTHS[0]
    with pytest.raises(NoiseError):
        responder.read_message(message)
    # It never produced anything to send: its first write is refused too.
    with pytest.raises(NoiseError):
        responder.write_message()


def test_mesh_prologue_binds_name_and_version() -> None:
    assert MESH_PROLOGUE.startswith(b"syncron-p2p")
    assert MESH_PROLOGUE.endswith(noise.MESH_PROTOCOL_VERSION.to_bytes(2, "big"))
    init, resp = make(
        "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b",
        prologue_init=MESH_PROLOGUE,
        prologue_resp=b"syncron-p2p\x00\x00\x02",
    )
    with pytest.raises(NoiseError):
        resp.read_message(init.write_message())


def test_wrong_prologue_fails() -> None:
    assert run_with_prologue("Noise_XX_25519_ChaChaPoly_BLAKE2b") == 1
    assert run_with_prologue("Noise_IK_25519_ChaChaPoly_BLAKE2b") == 0


def run_with_prologue(name: str) -> int:
    init, resp = make(name, prologue_resp=b"q")
    for i in range(3):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        try:
            receiver.read_message(sender.write_message())
        except NoiseError:
            return i
    raise AssertionError("prologue mismatch went unnoticed")


# ------------------------------------------------- flipped, cut, too long


def test_every_flipped_byte_of_every_xxpsk0_message_is_caught_at_once() -> None:
    name = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
    messages = transcript(name)
    cases = 0
    for index, message in enumerate(messages):
        for pos in range(len(message)):

            def flip(m: bytes, pos: int = pos) -> bytes:
                return m[:pos] + bytes([m[pos] ^ 0x01]) + m[pos + 1 :]

            assert run_with(name, index, flip) == index
            cases += 1
    assert cases == sum(len(m) for m in messages) > 200


@pytest.mark.parametrize(
    "name",
    [
        "Noise_XX_25519_ChaChaPoly_BLAKE2b",
        "Noise_IK_25519_ChaChaPoly_BLAKE2b",
        "Noise_NN_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b",
    ],
)
def test_every_flipped_byte_is_caught_by_the_next_message_at_latest(name: str) -> None:
    # Without psk0 a message-1 ephemeral is not authenticated by message 1
    # itself, but any change breaks the following message.
    for index, message in enumerate(transcript(name)):
        for pos in range(0, len(message), 3):

            def flip(m: bytes, pos: int = pos) -> bytes:
                return m[:pos] + bytes([m[pos] ^ 0x80]) + m[pos + 1 :]

            assert run_with(name, index, flip) in (index, index + 1)


def test_truncated_handshake_messages_are_refused() -> None:
    name = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
    for index, message in enumerate(transcript(name)):
        for cut in range(len(message)):

            def truncate(m: bytes, cut: int = cut) -> bytes:
                return m[:cut]

            assert run_with(name, index, truncate) == index


def test_over_long_handshake_messages_are_refused() -> None:
    name = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
    for index in range(3):
        for extra in (b"\x00", b"x" * 17, b"y" * (MAX_MESSAGE + 1)):

            def extend(m: bytes, extra: bytes = extra) -> bytes:
                return m + extra

            assert run_with(name, index, extend) == index


def test_writing_an_over_long_handshake_message_is_refused() -> None:
    init, _ = make("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
    with pytest.raises(NoiseError):
        init.write_message(b"x" * MAX_MESSAGE)


def test_a_handshake_message_of_exactly_max_size_is_accepted() -> None:
    init, resp = make("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
    payload = b"x" * (MAX_MESSAGE - 32 - 16)
    message = init.write_message(payload)
    assert len(message) == MAX_MESSAGE
    assert resp.read_message(message) == payload


# ---------------------------------------------------- low-order points


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_small_order_points_are_refused_by_dh(point: bytes) -> None:
    with pytest.raises(NoiseError):
        dh(INIT_STATIC.private, point)


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS[:7])
def test_small_order_ephemeral_from_a_member_is_refused(point: bytes) -> None:
    # Even a peer holding the PSK (who can make message 1 authenticate)
    # cannot force a predictable shared secret with a small-order ephemeral.
    evil = KeyPair(bytes(32), point)
    init = mesh_handshake(True, INIT_STATIC, PSK, ephemeral_factory=lambda: evil)
    resp = mesh_handshake(False, RESP_STATIC, PSK)
    resp.read_message(init.write_message())
    with pytest.raises(NoiseError):
        resp.write_message()  # "ee" with the small-order point


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS[:7])
def test_small_order_static_in_a_pre_message_is_refused(point: bytes) -> None:
    init = HandshakeState(
        "Noise_IK_25519_ChaChaPoly_BLAKE2b",
        True,
        s=INIT_STATIC,
        rs=point,
        ephemeral_factory=fixed(INIT_EPHEMERAL),
    )
    with pytest.raises(NoiseError):
        init.write_message()  # "es" with the small-order point


def test_all_zero_dh_result_is_refused_even_if_libsodium_returned_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(noise, "crypto_scalarmult", lambda n, p: bytes(32))
    with pytest.raises(NoiseError):
        dh(INIT_STATIC.private, RESP_STATIC.public)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_malformed_public_keys_are_refused(length: int) -> None:
    with pytest.raises(NoiseError):
        dh(INIT_STATIC.private, b"\x09" * length)


# ------------------------------------------------------ transport phase


def transport_pair() -> tuple[TransportState, TransportState]:
    init, resp = make("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
    while not init.is_finished:
        sender, receiver = (init, resp) if init.is_my_turn else (resp, init)
        receiver.read_message(sender.write_message())
    return init.split(), resp.split()


def test_transport_round_trip_and_max_size() -> None:
    a, b = transport_pair()
    message = a.encrypt(b"z" * MAX_PLAINTEXT)
    assert len(message) == MAX_MESSAGE
    assert b.decrypt(message) == b"z" * MAX_PLAINTEXT
    assert a.decrypt(b.encrypt(b"back")) == b"back"


def test_transport_message_over_65535_bytes_is_refused() -> None:
    a, b = transport_pair()
    with pytest.raises(NoiseError):
        a.encrypt(b"z" * (MAX_PLAINTEXT + 1))
    with pytest.raises(NoiseError):
        b.decrypt(b"\x00" * (MAX_MESSAGE + 1))


def test_reordered_transport_messages_are_refused() -> None:
    a, b = transport_pair()
    first, second = a.encrypt(b"1"), a.encrypt(b"2")
    with pytest.raises(NoiseError):
        b.decrypt(second)
    # The receiving direction is dead now, even for the right message.
    with pytest.raises(NoiseError):
        b.decrypt(first)


def test_replayed_transport_message_is_refused() -> None:
    a, b = transport_pair()
    message = a.encrypt(b"once")
    assert b.decrypt(message) == b"once"
    with pytest.raises(NoiseError):
        b.decrypt(message)


@pytest.mark.parametrize("cut", [0, 1, 15, 16, 20])
def test_truncated_transport_message_is_refused(cut: int) -> None:
    a, b = transport_pair()
    message = a.encrypt(b"a message of some length")
    with pytest.raises(NoiseError):
        b.decrypt(message[:cut])


def test_reflected_transport_message_is_refused() -> None:
    a, _ = transport_pair()
    with pytest.raises(NoiseError):
        a.decrypt(a.encrypt(b"to myself"))


def test_nonce_exhaustion_refuses_to_encrypt_or_decrypt() -> None:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    last = sender.encrypt_with_ad(b"", b"last")  # n = 2**64-2 is the last nonce
    assert receiver.decrypt_with_ad(b"", last) == b"last"
    assert sender.n == receiver.n == MAX_NONCE
    with pytest.raises(NoiseError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", last)


def test_failed_decrypt_leaves_the_nonce_alone() -> None:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    good = sender.encrypt_with_ad(b"ad", b"x")
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"other ad", good)
    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"ad", good) == b"x"


def test_rekey_is_symmetric_and_changes_the_key() -> None:
    a, b = transport_pair()
    a.rekey_send()
    message = a.encrypt(b"after rekey")
    with pytest.raises(NoiseError):
        b.decrypt(message)
    a2, b2 = transport_pair()
    a2.rekey_send()
    b2.rekey_recv()
    assert b2.decrypt(a2.encrypt(b"after rekey")) == b"after rekey"


# ----------------------------------------------- the same, over the wire


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


async def victim_with_attacker(
    frames: Callable[[TransportState], list[bytes]],
) -> tuple[str, bytes]:
    """A responder SecureStream fed ``frames`` by an honest-handshake attacker."""
    raw, b = trio.testing.memory_stream_pair()
    victim = SecureStream.mesh(b, initiator=False, static=RESP_STATIC, mesh_secret=PSK)
    attacker = mesh_handshake(True, INIT_STATIC, PSK)
    got = bytearray()
    outcome = "unset"

    async def attack() -> None:
        await raw.send_all(frame(attacker.write_message()))
        data = bytearray()
        while len(data) < 2 + noise.MESH_HANDSHAKE_LENGTHS[1]:
            data += await raw.receive_some()
        attacker.read_message(bytes(data[2:]))
        await raw.send_all(frame(attacker.write_message()))
        await raw.send_all(b"".join(frames(attacker.split())))
        await raw.send_eof()
        while await raw.receive_some():
            pass

    async def defend() -> None:
        nonlocal outcome
        try:
            while chunk := await victim.receive_some():
                got.extend(chunk)
            outcome = "eof"
        except NoiseError:
            outcome = "noise"
            # The stream is closed and stays unusable.
            with pytest.raises(trio.BrokenResourceError):
                await victim.receive_some()
        finally:
            await victim.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack)
            nursery.start_soon(defend)
    return outcome, bytes(got)


async def test_stream_accepts_in_order_frames() -> None:
    outcome, got = await victim_with_attacker(
        lambda t: [frame(t.encrypt(b"one")), frame(t.encrypt(b"two"))]
    )
    assert (outcome, got) == ("eof", b"onetwo")


async def test_stream_refuses_reordered_frames() -> None:
    def frames(t: TransportState) -> list[bytes]:
        one, two = frame(t.encrypt(b"one")), frame(t.encrypt(b"two"))
        return [two, one]

    assert await victim_with_attacker(frames) == ("noise", b"")


async def test_stream_refuses_replayed_frames() -> None:
    def frames(t: TransportState) -> list[bytes]:
        one = frame(t.encrypt(b"one"))
        return [one, one]

    assert await victim_with_attacker(frames) == ("noise", b"one")


async def test_stream_refuses_truncated_frames() -> None:
    def frames(t: TransportState) -> list[bytes]:
        body = t.encrypt(b"a longer message")
        return [frame(body[:-1])]  # consistent length prefix, cut body

    assert await victim_with_attacker(frames) == ("noise", b"")


async def test_stream_refuses_frames_cut_by_end_of_stream() -> None:
    def frames(t: TransportState) -> list[bytes]:
        return [frame(t.encrypt(b"a longer message"))[:-1]]

    assert await victim_with_attacker(frames) == ("noise", b"")


async def test_stream_closes_on_nonce_exhaustion() -> None:
    a, b = trio.testing.memory_stream_pair()
    left = SecureStream.mesh(a, initiator=True, static=INIT_STATIC, mesh_secret=PSK)
    right = SecureStream.mesh(b, initiator=False, static=RESP_STATIC, mesh_secret=PSK)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.do_handshake)
        nursery.start_soon(right.do_handshake)
    assert left._transport is not None and right._transport is not None
    left._transport.send_cipher.set_nonce(MAX_NONCE - 1)
    right._transport.recv_cipher.set_nonce(MAX_NONCE - 1)
    await left.send_all(b"last")
    assert await right.receive_some() == b"last"
    with pytest.raises(NoiseError):
        await left.send_all(b"one too many")
    with pytest.raises(trio.BrokenResourceError):
        await left.send_all(b"again")
    assert await right.receive_some() == b""  # the channel was closed


def test_zero_copy_paths_match_the_spec_paths() -> None:
    a, b = transport_pair()
    a2, b2 = transport_pair()
    for size in (0, 1, 1000, MAX_PLAINTEXT):
        plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
        expected = a.encrypt(plaintext)
        out = bytearray(3 + len(expected))
        n = a2.encrypt_into(memoryview(plaintext), out, 3)
        assert bytes(out[3 : 3 + n]) == expected
        assert b.decrypt(expected) == plaintext
        assert b2.decrypt_in_place(out, 3, 3 + n) == size
        assert bytes(out[3 : 3 + size]) == plaintext
    with pytest.raises(NoiseError):
        a2.encrypt_into(b"x" * (MAX_PLAINTEXT + 1), bytearray(MAX_MESSAGE + 20), 0)
    forged = bytearray(a.encrypt(b"forged"))
    forged[0] ^= 1
    with pytest.raises(NoiseError):
        b2.decrypt_in_place(forged, 0, len(forged))
    with pytest.raises(NoiseError):  # the direction is dead now
        b2.decrypt_in_place(bytearray(a2.encrypt(b"ok")), 0, 18)


def test_the_cipher_changes_only_before_the_first_transport_message() -> None:
    init, resp = make("Noise_NN_25519_ChaChaPoly_BLAKE2b")
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    tx, rx = init.split(), resp.split()
    rx.decrypt(tx.encrypt(b"one"))
    with pytest.raises(ValueError):
        tx.use_cipher(noise.CHACHAPOLY)
    with pytest.raises(ValueError):
        noise.CipherState(bytes(32), "Rot13")
