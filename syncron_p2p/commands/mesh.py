"""``init``, ``invite`` and ``peers``: identity, mesh membership and peers.

Thin: each command resolves the folder, calls :mod:`syncron_p2p.mesh` and
prints. Errors propagate as :class:`~syncron_p2p.errors.SyncronError` to
``cli.run``, which prints one line and picks the exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from syncron_p2p.folder import check_folder
from syncron_p2p.mesh import Mesh
from syncron_p2p.node import control


def init(
    folder: Annotated[Path, typer.Argument(help="The folder to sync.")],
    code: Annotated[
        str | None,
        typer.Option("--code", help="Join the mesh of this invite code instead of a new one."),
    ] = None,
    role: Annotated[
        str,
        typer.Option("--role", help="send-receive (default), send-only or receive-only."),
    ] = "send-receive",
) -> None:
    """Create this node's identity and a new mesh (or join one with --code)."""
    root = check_folder(folder)
    if code is None:
        mesh = Mesh.create(root, role=role)
        typer.echo(f"Created a new mesh for {root}.")
        typer.echo(f"node id:     {mesh.node_id}")
        typer.echo(f"invite code: {mesh.invite_code()}")
        typer.echo("Give the invite code only to machines you trust: it admits them to the mesh.")
    else:
        mesh = Mesh.join(root, code, role=role)
        typer.echo(f"Joined mesh {mesh.mesh_id.hex()} for {root}.")
        typer.echo(f"node id:     {mesh.node_id}")
        if mesh.secure_key is not None:
            typer.echo("This node holds the secure key.")


def invite(
    folder: Annotated[Path, typer.Argument(help="A folder set up with `init`.")],
    secure: Annotated[
        bool, typer.Option("--secure", help="Include the key that decrypts .secure files.")
    ] = False,
) -> None:
    """Print the invite code of the folder's mesh."""
    mesh = Mesh.load(check_folder(folder))
    typer.echo(mesh.invite_code(secure=secure))


def peers(
    folder: Annotated[Path, typer.Argument(help="A folder set up with `init`.")],
    remove: Annotated[
        str | None,
        typer.Option("--remove", metavar="NODE_ID", help="Refuse this peer from now on."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the peers this node has accepted, or remove one."""
    root = check_folder(folder)
    mesh = Mesh.load(root)
    if remove is not None:
        peer = mesh.peers.remove(remove)
        if as_json:
            typer.echo(json.dumps({"removed": peer.node_id}))
        else:
            typer.echo(f"Removed {peer.node_id}: it is refused from now on.")
        return
    live = control.query(root, {"cmd": "status"}) or {}
    connected = {p["node_id"] for p in live.get("peers", []) if p.get("connected")}
    if as_json:
        listing = {
            "node_id": mesh.node_id,
            "peers": [{**p.to_json(), "connected": p.node_id in connected} for p in mesh.peers],
        }
        typer.echo(json.dumps(listing, indent=2))
        return
    typer.echo(f"this node: {mesh.node_id}")
    if not len(mesh.peers):
        typer.echo("no peers yet")
    for peer in mesh.peers:
        state = "removed" if peer.removed else "accepted"
        state += ", connected" if peer.node_id in connected else ""
        typer.echo(f"{peer.node_id}  {state:19}  {peer.last_address or '-'}")


def register(app: typer.Typer) -> None:
    """Attach ``init``, ``invite`` and ``peers`` to ``app``."""
    app.command("init")(init)
    app.command("invite")(invite)
    app.command("peers")(peers)
