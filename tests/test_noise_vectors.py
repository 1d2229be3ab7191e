"""Replay the public Noise test vectors (../shared/vectors/noise/*.json).

Every vector whose protocol name the engine supports is run: each handshake
message must match the expected ciphertext byte for byte and decrypt to the
payload on the other side, both sides must agree on the handshake hash (and
match it when the vector gives one), and the transport messages that follow
must match too. The format (including the transport-phase alternation) is
described in the README next to the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from syncron_p2p.crypto.noise import (
    HandshakeState,
    KeyPair,
    TransportState,
    aesgcm_available,
    keypair_from_private,
    parse_protocol_name,
    supports,
)

# CI clones the repository next to shared/, exactly like /work/main and
# /work/shared here: locate the vectors relative to this file, not the cwd.
VECTOR_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors" / "noise"
MIN_VECTORS = 200


def _load() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if not VECTOR_DIR.is_dir():
        return out
    for path in sorted(VECTOR_DIR.glob("*.json")):
        for i, vector in enumerate(json.loads(path.read_text())["vectors"]):
            name = vector.get("protocol_name") or vector["name"]
            if supports(name):
                out.append((f"{path.stem}[{i}]:{name}", vector))
    return out


VECTORS = _load()
needs_vectors = pytest.mark.skipif(
    not VECTOR_DIR.is_dir(), reason=f"Noise vector directory {VECTOR_DIR} is absent"
)


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return None if value is None else bytes.fromhex(value)


def _side(vector: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    name = vector.get("protocol_name") or vector["name"]
    static = _hex(vector, f"{prefix}_static")
    ephemeral = _hex(vector, f"{prefix}_ephemeral")
    fixed = keypair_from_private(ephemeral) if ephemeral else None

    def factory() -> KeyPair:
        assert fixed is not None, "the vector gives no ephemeral for this side"
        return fixed

    return HandshakeState(
        name,
        initiator,
        _hex(vector, f"{prefix}_prologue") or b"",
        s=keypair_from_private(static) if static else None,
        rs=_hex(vector, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(p) for p in vector.get(f"{prefix}_psks") or []],
        ephemeral_factory=factory,
    )


def replay(vector: dict[str, Any]) -> int:
    """Run one vector; return the number of messages checked."""
    name = vector.get("protocol_name") or vector["name"]
    pattern = parse_protocol_name(name)
    init, resp = _side(vector, "init", True), _side(vector, "resp", False)
    messages = vector["messages"]
    n_handshake = len(pattern.messages)
    assert len(messages) >= n_handshake
    for i, message in enumerate(messages[:n_handshake]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        payload = bytes.fromhex(message["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"], f"handshake message {i}"
        assert receiver.read_message(ciphertext) == payload
    assert init.is_finished and resp.is_finished
    assert init.handshake_hash == resp.handshake_hash
    if vector.get("handshake_hash"):
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    t_init, t_resp = init.split(), resp.split()
    for i, message in enumerate(messages[n_handshake:], start=n_handshake):
        tx: TransportState
        rx: TransportState
        if pattern.one_way or i % 2 == 0:
            tx, rx = t_init, t_resp
        else:
            tx, rx = t_resp, t_init
        payload = bytes.fromhex(message["payload"])
        ciphertext = tx.encrypt(payload)
        assert ciphertext.hex() == message["ciphertext"], f"transport message {i}"
        assert rx.decrypt(ciphertext) == payload
    return len(messages)


@needs_vectors
@pytest.mark.parametrize("vector", [v for _, v in VECTORS], ids=[i for i, _ in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    assert replay(vector) > 0


@needs_vectors
def test_enough_vectors_are_replayed() -> None:
    # A loader bug (wrong field, wrong directory, wrong suffix) must not pass
    # silently by running nothing.
    assert len(VECTORS) >= MIN_VECTORS, f"only {len(VECTORS)} vectors found"
    names = {(v.get("protocol_name") or v["name"]).split("_")[1] for _, v in VECTORS}
    for required in ("XX", "IK", "NN", "NK", "XK", "KK", "XXpsk0", "XXpsk3", "IKpsk2"):
        assert required in names
    aes = [i for i, _ in VECTORS if i.endswith("_25519_AESGCM_BLAKE2b")]
    # Where the hardware runs AES-GCM, its vectors run too (110 of them).
    assert len(aes) >= (100 if aesgcm_available() else 0)


@needs_vectors
def test_every_suite_vector_is_supported() -> None:
    total = 0
    for path in VECTOR_DIR.glob("*.json"):
        for vector in json.loads(path.read_text())["vectors"]:
            name = vector.get("protocol_name") or vector["name"]
            suites = ["_25519_ChaChaPoly_BLAKE2b"]
            if aesgcm_available():
                suites.append("_25519_AESGCM_BLAKE2b")
            if name.endswith(tuple(suites)) and name.startswith("Noise_"):
                total += 1
                assert supports(name), name
    assert total == len(VECTORS)


def test_unsupported_names_are_refused() -> None:
    for name in (
        "Noise_XX_448_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_XX_25519_AESGCM_BLAKE2s",
        "Noise_ZZ_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk4_25519_ChaChaPoly_BLAKE2b",
        "NoisePSK_XX_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
    ):
        assert not supports(name)
        with pytest.raises(ValueError):
            parse_protocol_name(name)
