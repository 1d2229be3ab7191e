"""``join``, ``status``, ``conflicts``, ``demo`` and ``service``: running a node.

Thin: resolve the folder and options, build a :class:`NodeConfig`, run the
:class:`~syncron_p2p.node.runner.Node` under trio until SIGINT/SIGTERM, and
print. Errors propagate as :class:`~syncron_p2p.errors.SyncronError` to
``cli.run`` (one line, an exit code).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from syncron_p2p.config import Timing
from syncron_p2p.crypto.invite import decode_invite
from syncron_p2p.errors import SyncronError, UsageError
from syncron_p2p.folder import check_folder
from syncron_p2p.index.db import Index
from syncron_p2p.mesh import ROLES, Mesh
from syncron_p2p.node import control
from syncron_p2p.node.logs import setup_logging
from syncron_p2p.node.options import (
    DEFAULT_PORT,
    FolderLock,
    StoredOptions,
    load_options,
    parse_hostport,
    save_options,
)
from syncron_p2p.node.runner import Node, NodeConfig, count_conflicts
from syncron_p2p.sync.conflicts import CONFLICT_MARK

log = logging.getLogger("syncron.cli")

_CONFLICT_RE = re.compile(
    r"^(?P<stem>.*?)"
    + re.escape(CONFLICT_MARK)
    + r"(?P<actor>.+)-(?P<hash>[0-9a-f]{8})(?:-[0-9]+)?(?P<ext>(\.[^.]*)?)$"
)


# ===================================================================== join


def run_trio(fn: Callable[..., Awaitable[None]], *args: object) -> None:
    """``trio.run``, unwrapping a SyncronError out of trio's exception groups."""
    try:
        trio.run(fn, *args)
    except BaseExceptionGroup as group:
        ours, _ = group.split(SyncronError)
        while ours is not None:
            first = ours.exceptions[0]
            if not isinstance(first, BaseExceptionGroup):
                raise first from None
            ours = first
        raise


def _check_role(role: str | None) -> str | None:
    if role is not None and role not in ROLES:
        raise UsageError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def _mesh_for(root: Path, code: str | None, role: str | None) -> tuple[Mesh, bool]:
    """Load the folder's mesh, or create/join one; (mesh, newly created)."""
    if not Mesh.exists(root):
        if code is None:
            return Mesh.create(root, role=role or "send-receive"), True
        return Mesh.join(root, code, role=role or "send-receive"), False
    mesh = Mesh.load(root)
    if code is not None and decode_invite(code).mesh_id != mesh.mesh_id:
        raise UsageError(
            f"{root} already belongs to another mesh; that invite code is for a different one"
        )
    if role is not None and role != mesh.role:
        mesh.role = role
        mesh.save()
    return mesh, False


def _timing(
    anti_entropy: float | None, heartbeat: float | None, peer_timeout: float | None
) -> Timing:
    base = Timing()
    return Timing(
        anti_entropy_period=anti_entropy or base.anti_entropy_period,
        heartbeat_interval=heartbeat or base.heartbeat_interval,
        peer_timeout=peer_timeout or base.peer_timeout,
    )


def join(
    folder: Annotated[Path, typer.Argument(help="The folder to sync.")],
    code: Annotated[
        str | None, typer.Option("--code", help="Invite code of the mesh to join (first run).")
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help=f"Listen here (default 0.0.0.0:{DEFAULT_PORT}; port 0 picks one).",
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer", metavar="HOST:PORT", help="A peer to dial (repeatable; remembered)."
        ),
    ] = None,
    mdns: Annotated[
        bool | None, typer.Option("--mdns/--no-mdns", help="Discover peers by mDNS (default on).")
    ] = None,
    mdns_interface: Annotated[
        list[str] | None,
        typer.Option(
            "--mdns-interface",
            metavar="IP",
            help="Run mDNS only on this local address (repeatable).",
        ),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option("--role", help="send-receive (default), send-only or receive-only."),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logging.")] = 0,
    anti_entropy: Annotated[float | None, typer.Option(hidden=True)] = None,
    heartbeat: Annotated[float | None, typer.Option(hidden=True)] = None,
    peer_timeout: Annotated[float | None, typer.Option(hidden=True)] = None,
    scan_interval: Annotated[float | None, typer.Option(hidden=True)] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", hidden=True)] = True,
    watch_budget: Annotated[int | None, typer.Option(hidden=True)] = None,
    max_backoff: Annotated[float | None, typer.Option(hidden=True)] = None,
    rebrowse: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the node for FOLDER in the foreground until Ctrl-C / SIGTERM."""
    root = check_folder(folder)
    _check_role(role)
    setup_logging(verbose=verbose, as_json=log_json)
    lock = FolderLock(root)
    lock.acquire()
    try:
        mesh, created = _mesh_for(root, code, role)
        stored = load_options(root)
        if listen is not None:
            parse_hostport(listen, what="--listen")
            stored.listen = listen
        for p in peer or []:
            parse_hostport(p, what="--peer", default_port=DEFAULT_PORT)
            if p not in stored.peers:
                stored.peers.append(p)
        if mdns is not None:
            stored.mdns = mdns
        if mdns_interface:
            stored.mdns_interfaces = list(mdns_interface)
        save_options(root, stored)
        config = _config(root, stored, _timing(anti_entropy, heartbeat, peer_timeout))
        config.scan_interval = scan_interval
        config.watch = watch
        config.watch_budget = watch_budget
        if max_backoff is not None:
            config.max_backoff = max_backoff
        if rebrowse is not None:
            config.rebrowse_interval = rebrowse
        config.progress = sys.stderr.isatty() and not log_json
        typer.echo(f"node id:     {mesh.node_id}")
        typer.echo(f"folder:      {root} ({mesh.role})")
        if created:
            typer.echo(f"Created a new mesh. invite code: {mesh.invite_code()}")
            typer.echo("Run `syncron-p2p join FOLDER --code CODE` on the other machines.")
        run_trio(_serve, Node(mesh, config))
    finally:
        lock.release()


def _config(root: Path, stored: StoredOptions, timing: Timing) -> NodeConfig:
    listen = parse_hostport(stored.listen, what="listen address")
    peers = [parse_hostport(p, what="peer", default_port=DEFAULT_PORT) for p in stored.peers]
    return NodeConfig(
        folder=root,
        listen=listen,
        peers=peers,
        mdns=stored.mdns,
        mdns_interfaces=list(stored.mdns_interfaces),
        timing=timing,
    )


GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cyclic garbage less often than Python's default (700, 10, 10).

    An applied file allocates a few dozen container objects, almost none of
    them in cycles (reference counting frees them); at the default threshold
    the collector ran every ~20 files and, every tenth time, walked the
    node's long-lived structures too (``benchmarks/bench_receive.py``: the
    receiver's user time 0.92x of the default's). A node process only.
    """
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(node: Node) -> None:
    """Run ``node`` until SIGINT/SIGTERM (even during its initial scan), then stop it.

    The first signal stops the node cleanly (goodbyes to peers, flush, close);
    a second one stops it at once.
    """
    tune_gc()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_node() -> None:
                try:
                    await node.run()
                finally:
                    nursery.cancel_scope.cancel()

            async def on_signals() -> None:
                async for signum in signals:
                    if node.stopping:
                        log.info("stopping now (%s again)", signal.Signals(signum).name)
                        node.kill()
                    else:
                        log.info("stopping (%s)", signal.Signals(signum).name)
                        nursery.start_soon(node.stop)

            async def announce() -> None:
                await node.ready.wait()
                # What the initial scan loaded lives as long as the node: no
                # collection needs to look at it again.
                gc.freeze()
                host, port = node.listen_address or ("?", 0)
                typer.echo(f"listening on {host}:{port}")

            nursery.start_soon(run_node)
            nursery.start_soon(on_signals)
            nursery.start_soon(announce)


# =================================================================== status


def offline_status(root: Path) -> dict[str, Any]:
    """What the database says when no node runs."""
    mesh = Mesh.load(root)
    with Index.open(root, mesh.node_id) as index:
        out = {
            "running": False,
            "folder": str(root),
            "node_id": mesh.node_id,
            "role": mesh.role,
            "listen": None,
            "merkle_root": index.merkle.root().hex(),
            "entries": len(index.merkle),
            "conflicts": count_conflicts(index),
        }
    out["peers"] = [
        {"node_id": p.node_id, "address": p.last_address, "connected": False, "in_sync": False}
        for p in mesh.peers
        if not p.removed
    ]
    out["pending"] = {"files": 0, "bytes": 0}
    return out


def node_status(root: Path) -> dict[str, Any]:
    reply = control.query(root, {"cmd": "status"})
    if reply is not None and "node_id" in reply:
        return reply
    return offline_status(root)


def status(
    folder: Annotated[Path, typer.Argument(help="A folder set up with init/join.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the node's state: peers, sync, pending transfers, conflicts."""
    root = check_folder(folder)
    st = node_status(root)
    if as_json:
        typer.echo(json.dumps(st))
        return
    state = f"running, listening on {st['listen']}" if st["running"] else "not running"
    typer.echo(f"node {st['node_id']} ({st['role']}): {state}")
    typer.echo(
        f"folder {st['folder']}: {st['entries']} entries, merkle root {st['merkle_root'][:16]}"
    )
    if not st["peers"]:
        typer.echo("peers: none yet")
    for p in st["peers"]:
        conn = "connected" if p["connected"] else "offline"
        sync = "in sync" if p["in_sync"] else ("syncing" if p["connected"] else "-")
        typer.echo(f"  {p['node_id']}  {conn:9}  {sync:8}  {p['address'] or '-'}")
    pending = st["pending"]
    typer.echo(f"pending: {pending['files']} files, {pending['bytes']} bytes")
    hint = f" (see `syncron-p2p conflicts {folder}`)" if st["conflicts"] else ""
    typer.echo(f"conflicts: {st['conflicts']}{hint}")


# ================================================================ conflicts


def parse_conflict_name(path: str) -> tuple[str, str, str] | None:
    """(original path, losing actor prefix, content hash prefix) of a conflict copy."""
    head, sep, name = path.rpartition("/")
    m = _CONFLICT_RE.match(name)
    if m is None:
        return None
    return f"{head}{sep}{m['stem']}{m['ext']}", m["actor"], m["hash"]


def list_conflicts(root: Path) -> list[dict[str, Any]]:
    mesh = Mesh.load(root)
    out = []
    with Index.open(root, mesh.node_id) as index:
        for rec in index.all():
            if rec.deleted or CONFLICT_MARK not in rec.path:
                continue
            parsed = parse_conflict_name(rec.path)
            original, actor, digest = parsed if parsed else ("?", "?", "?")
            current = index.get(original) if parsed else None
            out.append(
                {
                    "path": rec.path,
                    "conflicted_with": original,
                    "original_exists": bool(current and not current.deleted),
                    "original_by": (current.origin.split(".")[0] if current else None),
                    "copy_by": actor,
                    "copy_hash": digest,
                    "size": rec.size,
                }
            )
    return out


def conflicts(
    folder: Annotated[Path, typer.Argument(help="A folder set up with init/join.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List conflict copies and the file each one conflicted with."""
    found = list_conflicts(check_folder(folder))
    if as_json:
        typer.echo(json.dumps({"conflicts": found}))
        return
    if not found:
        typer.echo("no conflicts")
        return
    for c in found:
        by = f"version by {c['copy_by']}"
        now = f"current by {c['original_by']}" if c["original_exists"] else "original gone"
        typer.echo(f"{c['path']}\n    conflicted with {c['conflicted_with']} ({by}; {now})")
    typer.echo(
        f"{len(found)} conflict copies. Compare each with its original, keep what you want,"
        " and delete the copy: the deletion syncs."
    )


# ================================================================== service


def service(
    folder: Annotated[Path, typer.Argument(help="The folder the service syncs.")],
    user: Annotated[str | None, typer.Option("--user", help="Run as this user.")] = None,
) -> None:
    """Print a systemd unit that runs `join FOLDER` at boot (see docs/raspberry-pi.md)."""
    root = check_folder(folder)
    exe = shutil.which("syncron-p2p") or os.path.abspath(sys.argv[0])
    who = user or os.environ.get("SUDO_USER") or os.environ.get("USER") or "pi"
    unit = f"""\
# /etc/systemd/system/syncron-p2p@{root.name}.service  (install: see docs/raspberry-pi.md)
[Unit]
Description=syncron-p2p folder sync for {root}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={who}
ExecStart={shlex.quote(exe)} join {shlex.quote(str(root))}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=20
Nice=10
IOSchedulingClass=idle
MemoryMax=256M
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""
    typer.echo(unit, nl=False)


# ===================================================================== demo


def demo(
    mdns: Annotated[
        bool, typer.Option("--mdns/--no-mdns", help="Also discover by mDNS on 127.0.0.1.")
    ] = True,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary folders.")] = False,
) -> None:
    """Three nodes on 127.0.0.1 in temporary folders: a sync and a conflict, then exit."""
    from syncron_p2p.node.demo import run_demo

    setup_logging(verbose=0)
    logging.getLogger("syncron").setLevel(logging.ERROR)
    run_trio(run_demo, typer.echo, mdns, keep)


# ================================================================== revert


def revert_offline(root: Path) -> list[str]:
    """Revert a stopped receive-only node's local edits directly on its folder."""
    from syncron_p2p.config import Role
    from syncron_p2p.node.disk import RealDisk
    from syncron_p2p.sync.engine import Engine

    mesh = Mesh.load(root)
    lock = FolderLock(root)  # (never beside a running node: a node busy past the query's time)
    try:
        lock.acquire()
    except UsageError as exc:
        raise UsageError(f"{exc}, and did not answer in time: try again") from None
    try:
        disk = RealDisk(root)
        try:
            with Index.open(root, mesh.node_id) as index:
                engine = Engine(index, disk, mesh.node_id, role=Role(mesh.role))
                reverted, _ = engine.revert_local(0.0)
        finally:
            disk.close()
    finally:
        lock.release()
    return reverted


def revert(
    folder: Annotated[Path, typer.Argument(help="A receive-only folder.")],
) -> None:
    """Receive-only: undo local edits (each is kept as a conflict copy) and follow the mesh."""
    root = check_folder(folder)
    mesh = Mesh.load(root)
    if mesh.role != "receive-only":
        raise UsageError(
            f"{folder} is {mesh.role}; only receive-only folders have local edits to revert"
        )
    reply = control.query(root, {"cmd": "revert"})
    reverted = (
        reply["reverted"] if reply is not None and "reverted" in reply else revert_offline(root)
    )
    if not reverted:
        typer.echo("nothing to revert: this folder follows the mesh")
        return
    for path in reverted:
        typer.echo(f"reverted {path}")
    typer.echo(
        f"{len(reverted)} local change(s) set aside as conflict copies; the mesh's versions follow"
    )


def register(app: typer.Typer) -> None:
    """Attach the node commands to ``app``."""
    app.command("join")(join)
    app.command("status")(status)
    app.command("conflicts")(conflicts)
    app.command("revert")(revert)
    app.command("service")(service)
    app.command("demo")(demo)
