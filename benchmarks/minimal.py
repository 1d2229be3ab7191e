"""The smallest receiver with issue 4's guarantees: a benchmark reference.

Two processes over TCP on 127.0.0.1. The sender reads each file of a tree
and encrypts it (ChaCha20-Poly1305 from PyNaCl, the channel's cipher; each
file's blake3 hash comes from a list made before the timing, as a node's
comes from its index). The receiver decrypts it, checks its hash, writes a
temp and hands it to a flusher thread that makes each batch of 256 durable
(``syncfs``) and renames it into place. Sender: a read+encrypt thread and a
send thread; receiver: a receive+decrypt thread, a verify+write thread and
the flusher. No protocol, no index, no reconciliation, no per-file state:
what is left is the mandated work (encryption both ways, verification, a
durable install) and Python's cheapest way to spread it over the cores (the
cipher, the hash and the system calls release the GIL).

Also here: :func:`pipelined_floor` (the same installs from a local loop, no
network, no cipher, no hash) and :func:`primitives` (the cipher's and the
hash's throughput on one core). ``bench_bounds.py`` and ``bench_sync.py``
time these beside rsync and the nodes.

As a program (``python minimal.py SRC PORT``, key and hashes in hex on
stdin, one per line) it is the sender.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt as decrypt,
)
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_encrypt as encrypt,
)

from syncron_p2p.node.disk import _SYNCFS, _syncfs
from syncron_p2p.paths import STATE_DIR

BATCH = 256  # files per flush, as the engine's installs and the serial floor
FRAME = struct.Struct(">HI")  # name length, ciphertext length; then name, hash, ciphertext
QUEUED = 64  # items between pipeline stages


def tree_files(src: Path) -> list[str]:
    """The tree's files, relative, in a stable order; not a node's state
    (``.syncron/`` at the top, which rsync is told to exclude too)."""
    out: list[str] = []
    for top, dirs, names in os.walk(src):
        dirs.sort()
        if top == str(src):
            dirs[:] = [d for d in dirs if d != STATE_DIR]
        out.extend(os.path.relpath(os.path.join(top, n), src) for n in sorted(names))
    return out


def tree_digests(src: Path, files: list[str]) -> bytes:
    """The files' blake3 hashes, 32 bytes each, in order (made before any timing)."""
    return b"".join(blake3.blake3((src / f).read_bytes()).digest() for f in files)


def _flush(dest: Path) -> None:
    if _SYNCFS is not None:
        _syncfs(dest)
    else:
        os.sync()


class Flusher:
    """A thread that makes batches of temps durable, then renames them into place."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.batches: queue.Queue[list[tuple[str, str]] | None] = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.batches.get()) is not None:
            _flush(self.dest)
            for temp, target in batch:
                os.rename(temp, target)
            _flush(self.dest)  # the renames too

    def finish(self, batch: list[tuple[str, str]]) -> None:
        self.batches.put(batch)
        self.batches.put(None)
        self.thread.join()


class Installer:
    """Writes each file to a temp in ``dest/.tmp`` and queues it for the flusher."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.tmp = dest / ".tmp"
        self.tmp.mkdir(parents=True)
        self.flusher = Flusher(dest)
        self.batch: list[tuple[str, str]] = []
        self.made: set[str] = set()
        self.count = 0

    def write(self, rel: str, data: bytes) -> None:
        parent = os.path.dirname(rel)
        if parent not in self.made:
            os.makedirs(self.dest / parent, exist_ok=True)
            self.made.add(parent)
        temp = f"{self.tmp}/{self.count}"
        self.count += 1
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.batch.append((temp, f"{self.dest}/{rel}"))
        if len(self.batch) == BATCH:
            self.flusher.batches.put(self.batch)
            self.batch = []

    def finish(self) -> None:
        self.flusher.finish(self.batch)


def pipelined_floor(src: Path, files: list[str], dest: Path) -> float:
    """Seconds to copy ``files`` from ``src`` to ``dest``: writes go on while
    the flusher makes the previous batch durable and renames it."""
    t0 = time.perf_counter()
    inst = Installer(dest)
    for rel in files:
        with open(src / rel, "rb") as fh:
            inst.write(rel, fh.read())
    inst.finish()
    return time.perf_counter() - t0


def _nonce(n: int) -> bytes:
    return n.to_bytes(12, "little")


def send(src: Path, port: int, key: bytes, digests: bytes) -> None:
    """The minimal sender (a child process): read, encrypt, send.

    ``digests``: the files' blake3 hashes, 32 bytes each in :func:`tree_files`
    order, computed before the timing starts (a node has them in its index).
    """
    files = tree_files(src)
    sock = socket.create_connection(("127.0.0.1", port))
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED)

    def produce() -> None:
        out: list[bytes] = []
        for n, rel in enumerate(files):
            with open(src / rel, "rb") as fh:
                data = fh.read()
            name = rel.encode()
            sealed = encrypt(data, None, _nonce(n), key)
            out.append(FRAME.pack(len(name), len(sealed)) + name + digests[32 * n : 32 * n + 32])
            out.append(sealed)
            if len(out) >= 16:
                chunks.put(b"".join(out))
                out = []
        chunks.put(b"".join(out))
        chunks.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (chunk := chunks.get()) is not None:
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the receiver's "done"
    sock.close()


def receive(conn: socket.socket, key: bytes, dest: Path, count: int) -> None:
    """The minimal receiver: receive+decrypt, verify+write, flush+rename."""
    items: queue.Queue[tuple[str, bytes, bytes] | None] = queue.Queue(maxsize=QUEUED)

    def receive_decrypt() -> None:
        buf = bytearray()
        pos = n = 0
        while True:
            chunk = conn.recv(4 << 20)
            if not chunk:
                break
            del buf[:pos]
            pos = 0
            buf += chunk
            while len(buf) - pos >= FRAME.size:
                name_len, sealed_len = FRAME.unpack_from(buf, pos)
                start = pos + FRAME.size
                end = start + name_len + 32 + sealed_len
                if len(buf) < end:
                    break
                rel = bytes(buf[start : start + name_len]).decode()
                digest = bytes(buf[start + name_len : start + name_len + 32])
                sealed = bytes(buf[start + name_len + 32 : end])
                items.put((rel, digest, decrypt(sealed, None, _nonce(n), key)))
                n += 1
                pos = end
        items.put(None)

    threading.Thread(target=receive_decrypt, daemon=True).start()
    inst = Installer(dest)
    got = 0
    while (item := items.get()) is not None:
        rel, digest, data = item
        if blake3.blake3(data).digest() != digest:
            raise RuntimeError(f"{rel}: hash mismatch")
        inst.write(rel, data)
        got += 1
    inst.finish()
    if got != count:
        raise RuntimeError(f"received {got} files of {count}")


def minimal_receiver(
    src: Path, count: int, digests: bytes, dest: Path
) -> tuple[float, float, float]:
    """Copy the tree at ``src`` (``count`` files, their ``digests``) into
    ``dest`` through a sender process: seconds, then the receiver's and the
    sender's CPU seconds."""
    key = os.urandom(32)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    c0 = os.times()
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, str(src), str(listener.getsockname()[1])],
        stdin=subprocess.PIPE,
    )
    assert child.stdin is not None
    child.stdin.write(key.hex().encode() + b"\n" + digests.hex().encode())
    child.stdin.close()
    conn, _ = listener.accept()
    receive(conn, key, dest, count)
    conn.send(b"x")
    conn.close()
    child.wait()
    wall = time.perf_counter() - t0
    c1 = os.times()
    listener.close()
    if child.returncode:
        raise RuntimeError(f"sender exited with {child.returncode}")
    mine = c1.user + c1.system - c0.user - c0.system
    theirs = c1.children_user + c1.children_system - c0.children_user - c0.children_system
    return wall, mine, theirs


def primitives(size: int, total: int) -> dict[str, float]:
    """Seconds per GiB on one core: the channel's cipher both ways, blake3."""
    data = os.urandom(size)
    key = os.urandom(32)
    n = max(1, total // size)
    scale = 2**30 / (n * size)
    t0 = time.perf_counter()
    for i in range(n):
        sealed = encrypt(data, None, _nonce(i), key)
    t1 = time.perf_counter()
    for _ in range(n):
        decrypt(sealed, None, _nonce(n - 1), key)
    t2 = time.perf_counter()
    for _ in range(n):
        blake3.blake3(data).digest()
    t3 = time.perf_counter()
    return {
        "encrypt_s_per_gib": round((t1 - t0) * scale, 2),
        "decrypt_s_per_gib": round((t2 - t1) * scale, 2),
        "blake3_s_per_gib": round((t3 - t2) * scale, 2),
    }


if __name__ == "__main__":
    key_hex, digests_hex = sys.stdin.read().split("\n")
    send(Path(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(key_hex), bytes.fromhex(digests_hex))
