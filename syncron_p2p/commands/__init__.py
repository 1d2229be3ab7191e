"""CLI commands, one module per concern; :func:`register_all` wires them."""

from __future__ import annotations

import typer

from syncron_p2p.commands import mesh, node, scan


def register_all(app: typer.Typer) -> None:
    """Attach every command module's commands to ``app``."""
    scan.register(app)
    mesh.register(app)
    node.register(app)
