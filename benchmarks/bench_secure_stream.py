"""SecureStream throughput (not a test).

Measures, in one run:

1. the bare PyNaCl rate of each transport cipher (ChaCha20-Poly1305 IETF, and
   AES-256-GCM where the hardware runs it): encrypt + decrypt of 65519-byte
   messages (the largest a Noise transport message carries) in one process,
   i.e. the crypto work per byte that a channel has to do;
2. plain trio TCP between two processes over 127.0.0.1;
3. SecureStream (mesh handshake, then transport) between two processes over
   127.0.0.1, once per cipher.

The receiver runs in a child process; the sender times from the first byte
to the receiver's one-byte acknowledgement that everything arrived.

    .venv/bin/python benchmarks/bench_secure_stream.py [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.bindings
import trio

from syncron_p2p.crypto.noise import (
    AESGCM,
    CHACHAPOLY,
    MAX_PLAINTEXT,
    ciphers,
    keypair_from_private,
)
from syncron_p2p.node.secure_stream import SecureStream

SECRET = bytes(range(32))
SERVER_KEY = keypair_from_private(bytes([7]) * 32)
CLIENT_KEY = keypair_from_private(bytes([9]) * 32)
SEND_CHUNK = 1 << 20


BARE = {
    CHACHAPOLY: ("chacha20poly1305_ietf", "little"),
    AESGCM: ("aes256gcm", "big"),
}


def bare_aead(total: int, cipher: str) -> float:
    name, order = BARE[cipher]
    encrypt = getattr(nacl.bindings, f"crypto_aead_{name}_encrypt")
    decrypt = getattr(nacl.bindings, f"crypto_aead_{name}_decrypt")
    key = os.urandom(32)
    message = os.urandom(MAX_PLAINTEXT)
    n = total // MAX_PLAINTEXT
    start = time.perf_counter()
    for i in range(n):
        nonce = b"\x00\x00\x00\x00" + i.to_bytes(8, order)  # type: ignore[arg-type]
        ct = encrypt(message, None, nonce, key)
        decrypt(ct, None, nonce, key)
    elapsed = time.perf_counter() - start
    return n * MAX_PLAINTEXT / elapsed


async def serve(mode: str, total: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(port, flush=True)
    raw = await listeners[0].accept()
    stream: trio.abc.Stream = raw
    if mode != "plain":
        stream = SecureStream.mesh(
            raw, initiator=False, static=SERVER_KEY, mesh_secret=SECRET, transport_ciphers=[mode]
        )
        await stream.do_handshake()
    got = 0
    while got < total:
        chunk = await stream.receive_some()
        if not chunk:
            raise SystemExit("sender went away early")
        got += len(chunk)
    await stream.send_all(b"k")
    await stream.aclose()


async def send(port: int, mode: str, total: int) -> float:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = raw
    if mode != "plain":
        stream = SecureStream.mesh(
            raw, initiator=True, static=CLIENT_KEY, mesh_secret=SECRET, transport_ciphers=[mode]
        )
        await stream.do_handshake()
    data = memoryview(os.urandom(SEND_CHUNK))
    start = time.perf_counter()
    sent = 0
    while sent < total:
        piece = data[: min(SEND_CHUNK, total - sent)]
        await stream.send_all(piece)
        sent += len(piece)
    ack = await stream.receive_some(1)
    elapsed = time.perf_counter() - start
    assert ack == b"k"
    await stream.aclose()
    return total / elapsed


def measure(mode: str, total: int) -> float:
    """Throughput of ``mode`` with the receiver in a child process."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--bytes", str(total)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    rate = trio.run(send, port, mode, total)
    proc.wait(timeout=30)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="data per measurement")
    parser.add_argument("--serve", choices=["plain", *ciphers()], help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.serve, args.bytes)
        return
    total = args.mib << 20
    mib = 1 << 20
    plain = measure("plain", total)
    rows = [(cipher, bare_aead(total, cipher), measure(cipher, total)) for cipher in ciphers()]
    print(f"{total // mib} MiB per measurement, {os.cpu_count()} CPUs\n")
    print(f"{'measurement':<44}{'MiB/s':>10}")
    print(f"{'plain trio TCP, 2 processes, loopback':<44}{plain / mib:>10.0f}")
    for cipher, bare, secure in rows:
        print(f"{f'bare {cipher} encrypt+decrypt':<44}{bare / mib:>10.0f}")
        print(f"{f'SecureStream {cipher}, 2 processes, loopback':<44}{secure / mib:>10.0f}")
    print()
    for cipher, bare, secure in rows:
        print(f"SecureStream {cipher} / bare AEAD : {secure / bare:6.1%}   (target >= 80%)")
        print(f"SecureStream {cipher} / plain TCP : {secure / plain:6.1%}")


if __name__ == "__main__":
    main()
