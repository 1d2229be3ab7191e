"""The smallest receiver with issue 4's guarantees: a benchmark reference.

Two processes over TCP on 127.0.0.1. The sender reads each file of a tree
and sends it encrypted as the channel does: with the cipher a node picks
(AES-256-GCM where libsodium runs it in hardware, else ChaCha20-Poly1305;
PyNaCl's libsodium), in messages of at most 65,519 bytes of plaintext (Noise's
limit), the file's name, size and blake3 hash authenticated with its first
message (the hash comes from a list made before the timing, as a node's
comes from its index). The receiver decrypts each file, checks its hash,
writes it to a temp under ``.tmp/`` (the node's temps live under
``.syncron/``), hints the kernel to start writing it back, and hands it to a
flusher thread that makes each batch of 256 durable (``syncfs``) and then
renames it into place (one more ``syncfs`` at the end). Sender: a
read+encrypt thread and a send thread; receiver: a receive+decrypt thread, a
verify+write thread and the flusher; items cross threads a batch at a time.

No protocol, no index, no reconciliation, no per-file state: what is left is
the mandated work (the cipher both ways, a hash check, a durable install)
and the cheapest way found to spread it over the cores in Python (the
cipher, the hash and the system calls release the GIL): the cipher is called
through PyNaCl's own cffi binding (``nacl._sodium``) on reused buffers, as
the public wrappers zero-fill and copy each output once more.

Also here: :func:`pipelined_floor` (the same installs from a local loop, no
network, no cipher, no hash) and :func:`primitives` (the cipher's and the
hash's throughput on one core). ``bench_bounds.py`` and ``bench_sync.py``
time these beside rsync and the nodes.

As a program (``python minimal.py PORT``: key, then the files as
``size hash-hex name`` lines, on stdin) it is the sender.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import nacl.bindings  # (initialises libsodium)
from nacl._sodium import ffi, lib  # (PyNaCl's own libsodium binding)

from syncron_p2p.paths import STATE_DIR

# The channel's cipher as a node picks it (syncron_p2p/crypto/noise.py):
# AES-256-GCM where libsodium runs it in hardware, else ChaCha20-Poly1305.
nacl.bindings.sodium_init()
if getattr(lib, "crypto_aead_aes256gcm_is_available", lambda: 0)() == 1:
    CIPHER = "AESGCM"
    _ENCRYPT, _DECRYPT = lib.crypto_aead_aes256gcm_encrypt, lib.crypto_aead_aes256gcm_decrypt
else:
    CIPHER = "ChaChaPoly"
    _ENCRYPT = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    _DECRYPT = lib.crypto_aead_chacha20poly1305_ietf_decrypt

BATCH = 256  # files per flush, as the engine's installs and the serial floor
CHUNK = 65535 - 16  # plaintext per encrypted message (Noise's maximum message)
TAG = 16
HEAD = struct.Struct(">HQ")  # name length, file size; then name, hash (the first AD)
SENT_AT_ONCE = 32  # files per send and per queue item

Entry = tuple[int, bytes, str]  # size, blake3 hash, relative name


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


def tree_entries(src: Path, files: list[str]) -> list[Entry]:
    """Size, blake3 hash and name of each file (made before any timing)."""
    out: list[Entry] = []
    for f in files:
        data = (src / f).read_bytes()
        out.append((len(data), blake3.blake3(data).digest(), f))
    return out


_WRITEBACK: Callable[[int, int, int], None] | None = getattr(os, "sync_file_range", None)


class Flusher:
    """A thread that makes batches of temps durable, then renames them into place."""

    def __init__(self, dest: Path) -> None:
        self.dest = str(dest)
        self.batches: queue.Queue[list[tuple[str, str]] | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # (imported here: the sender child, which never flushes, starts lighter)
        from syncron_p2p.node.disk import _SYNCFS, _syncfs

        flush: Callable[[str], None] = _syncfs if _SYNCFS is not None else lambda _p: os.sync()
        try:
            while (batch := self.batches.get()) is not None:
                flush(self.dest)  # the batch's data, before any of it is renamed
                for temp, target in batch:
                    os.rename(temp, target)
            flush(self.dest)  # the last renames
        except BaseException as exc:
            self.error = exc
            while self.batches.get() is not None:  # (let the writer finish)
                pass

    def put(self, batch: list[tuple[str, str]]) -> None:
        self.batches.put(batch)

    def finish(self, batch: list[tuple[str, str]]) -> None:
        if batch:
            self.batches.put(batch)
        self.batches.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"flusher failed: {self.error!r}")


class Installer:
    """Writes each file to a temp in ``dest/.tmp`` and queues it for the flusher."""

    def __init__(self, dest: Path) -> None:
        self.dest = str(dest)
        self.tmp = f"{dest}/.tmp"
        os.makedirs(self.tmp)
        self.flusher = Flusher(dest)
        self.batch: list[tuple[str, str]] = []
        self.made: set[str] = set()
        self.count = 0

    def write(self, rel: str, data: Any) -> None:
        parent = rel.rpartition("/")[0]
        if parent not in self.made:
            os.makedirs(f"{self.dest}/{parent}", exist_ok=True)
            self.made.add(parent)
        temp = f"{self.tmp}/{self.count}"
        self.count += 1
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if _WRITEBACK is not None:
                _WRITEBACK(fd, 0, 0, os.SYNC_FILE_RANGE_WRITE)  # start writeback now
        finally:
            os.close(fd)
        self.batch.append((temp, f"{self.dest}/{rel}"))
        if len(self.batch) == BATCH:
            self.flusher.put(self.batch)
            self.batch = []

    def finish(self) -> None:
        self.flusher.finish(self.batch)
        os.rmdir(self.tmp)


def pipelined_floor(src: Path, files: list[str], dest: Path) -> float:
    """Seconds to copy ``files`` from ``src`` to ``dest``: writes go on while
    the flusher makes the previous batch durable and renames it."""
    t0 = time.perf_counter()
    inst = Installer(dest)
    for rel in files:
        fd = os.open(src / rel, os.O_RDONLY)
        try:
            data = os.read(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        inst.write(rel, data)
    inst.finish()
    return time.perf_counter() - t0


def _nonce(n: int) -> bytes:
    return n.to_bytes(12, "little")


def _pieces(size: int) -> int:
    """Encrypted messages for a file of ``size`` bytes (an empty file: one)."""
    return max(1, -(-size // CHUNK))


class Cipher:
    """The channel's AEAD (:data:`CIPHER`) with a counter nonce, on reused buffers."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.n = 0
        self.outlen = ffi.new("unsigned long long *")

    def seal(self, plain: Any, ad: bytes, out: Any) -> None:
        """Encrypt ``plain`` into writable ``out`` (``len(plain) + 16`` bytes)."""
        ad_ptr = ad if ad else ffi.NULL
        _ENCRYPT(
            ffi.from_buffer(out), self.outlen, ffi.from_buffer(plain), len(plain),
            ad_ptr, len(ad), ffi.NULL, _nonce(self.n), self.key,
        )  # fmt: skip
        self.n += 1

    def open(self, sealed: Any, ad: bytes, out: Any) -> None:
        """Decrypt ``sealed`` into writable ``out``; raise if it fails its tag."""
        ad_ptr = ad if ad else ffi.NULL
        res = _DECRYPT(
            ffi.from_buffer(out), self.outlen, ffi.NULL, ffi.from_buffer(sealed), len(sealed),
            ad_ptr, len(ad), _nonce(self.n), self.key,
        )  # fmt: skip
        if res != 0:
            raise RuntimeError("message failed its authentication tag")
        self.n += 1


def send(src: Path, port: int, key: bytes, entries: list[Entry]) -> None:
    """The minimal sender (a child process): read, encrypt, send."""
    sock = socket.create_connection(("127.0.0.1", port))
    parts: queue.Queue[list[Any] | None] = queue.Queue(maxsize=8)
    cipher = Cipher(key)

    def produce() -> None:
        out: list[Any] = []
        for k, (size, digest, rel) in enumerate(entries):
            fd = os.open(src / rel, os.O_RDONLY)
            try:
                data = memoryview(os.read(fd, size))
            finally:
                os.close(fd)
            name = rel.encode()
            head = HEAD.pack(len(name), size) + name + digest
            sealed = bytearray(size + TAG * _pieces(size))
            at = 0
            for i in range(_pieces(size)):
                piece = data[i * CHUNK : (i + 1) * CHUNK]
                cipher.seal(piece, head if i == 0 else b"", memoryview(sealed)[at:])
                at += len(piece) + TAG
            out += (head, sealed)
            if (k + 1) % SENT_AT_ONCE == 0:
                parts.put(out)
                out = []
        parts.put(out)
        parts.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (batch := parts.get()) is not None:
        sent = sock.sendmsg(batch)
        if sent < sum(len(p) for p in batch):  # (a short send: the rest as one piece)
            sock.sendall(memoryview(b"".join(batch))[sent:])
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the receiver's "done"
    sock.close()


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    while view:
        got = conn.recv_into(view, len(view), socket.MSG_WAITALL)
        if not got:
            raise EOFError("sender closed early")
        view = view[got:]


def receive(conn: socket.socket, key: bytes, dest: Path, entries: list[Entry]) -> None:
    """The minimal receiver: receive+decrypt, verify+write, flush+rename."""
    items: queue.Queue[list[tuple[str, bytes, bytearray]] | BaseException | None]
    items = queue.Queue(maxsize=8)
    cipher = Cipher(key)

    def receive_decrypt() -> None:
        try:
            batch: list[tuple[str, bytes, bytearray]] = []
            for k, (size, digest, rel) in enumerate(entries):
                name = rel.encode()
                head = bytearray(HEAD.size + len(name) + 32)
                _recv_exact(conn, memoryview(head))
                if bytes(head) != HEAD.pack(len(name), size) + name + digest:
                    raise RuntimeError(f"unexpected header for {rel}")
                sealed = bytearray(size + TAG * _pieces(size))
                _recv_exact(conn, memoryview(sealed))
                plain = bytearray(size)
                ad, at = bytes(head), 0
                for i in range(_pieces(size)):
                    n = min(CHUNK, size - i * CHUNK)
                    out = memoryview(plain)[i * CHUNK : i * CHUNK + n]
                    cipher.open(memoryview(sealed)[at : at + n + TAG], ad, out)
                    ad, at = b"", at + n + TAG
                batch.append((rel, digest, plain))
                if (k + 1) % SENT_AT_ONCE == 0:
                    items.put(batch)
                    batch = []
            items.put(batch)
            items.put(None)
        except BaseException as exc:
            items.put(exc)

    threading.Thread(target=receive_decrypt, daemon=True).start()
    inst = Installer(dest)
    got = 0
    while (item := items.get()) is not None:
        if isinstance(item, BaseException):
            raise RuntimeError(f"receiving failed: {item!r}")
        for rel, digest, data in item:
            if blake3.blake3(data).digest() != digest:
                raise RuntimeError(f"{rel}: hash mismatch")
            inst.write(rel, data)
            got += 1
    inst.finish()
    if got != len(entries):
        raise RuntimeError(f"received {got} files of {len(entries)}")


def minimal_receiver(src: Path, entries: list[Entry], dest: Path) -> tuple[float, float, float]:
    """Copy ``entries`` of the tree at ``src`` into ``dest`` through a sender
    process: seconds (the sender's start included), then the receiver's and
    the sender's CPU seconds."""
    key = os.urandom(32)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(60)
    listing = "".join(f"{size} {digest.hex()} {rel}\n" for size, digest, rel in entries)
    c0 = os.times()
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, str(src), str(listener.getsockname()[1])],
        stdin=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None
        child.stdin.write(key.hex().encode() + b"\n" + listing.encode())
        child.stdin.close()
        conn, _ = listener.accept()
        conn.settimeout(None)
        receive(conn, key, dest, entries)
        conn.send(b"x")
        conn.close()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        listener.close()
    wall = time.perf_counter() - t0
    c1 = os.times()
    if child.returncode:
        raise RuntimeError(f"sender exited with {child.returncode}")
    mine = c1.user + c1.system - c0.user - c0.system
    theirs = c1.children_user + c1.children_system - c0.children_user - c0.children_system
    return wall, mine, theirs


def primitives(size: int, total: int) -> dict[str, Any]:
    """Seconds per GiB on one core: the channel's cipher both ways (messages
    of at most 64 KiB, as sent), blake3 (whole files of ``size`` bytes)."""
    data = memoryview(os.urandom(size))
    n = max(1, total // size)
    scale = 2**30 / (n * size)
    sealed = bytearray(size + TAG * _pieces(size))
    plain = bytearray(size)
    key = os.urandom(32)
    enc, dec = Cipher(key), Cipher(key)
    t0 = time.perf_counter()
    for _ in range(n):
        at = 0
        for i in range(_pieces(size)):
            piece = data[i * CHUNK : (i + 1) * CHUNK]
            enc.seal(piece, b"", memoryview(sealed)[at:])
            at += len(piece) + TAG
    t1 = time.perf_counter()
    dec.n = enc.n - _pieces(size)  # (decrypt the last file again and again)
    start = dec.n
    for _ in range(n):
        dec.n = start
        at = 0
        for i in range(_pieces(size)):
            m = min(CHUNK, size - i * CHUNK)
            dec.open(memoryview(sealed)[at : at + m + TAG], b"", memoryview(plain)[i * CHUNK :])
            at += m + TAG
    t2 = time.perf_counter()
    for _ in range(n):
        blake3.blake3(data).digest()
    t3 = time.perf_counter()
    return {
        "cipher": CIPHER,
        "encrypt_s_per_gib": round((t1 - t0) * scale, 2),
        "decrypt_s_per_gib": round((t2 - t1) * scale, 2),
        "blake3_s_per_gib": round((t3 - t2) * scale, 2),
    }


def _sender_main() -> None:
    src, port = Path(sys.argv[1]), int(sys.argv[2])
    key_hex, *lines = sys.stdin.read().splitlines()
    entries: list[Entry] = []
    for line in lines:
        size, digest, rel = line.split(" ", 2)
        entries.append((int(size), bytes.fromhex(digest), rel))
    send(src, port, bytes.fromhex(key_hex), entries)


if __name__ == "__main__":
    _sender_main()
