"""CLI commands, one module per concern; :func:`register_all` wires them."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer) -> None:
    """Attach every command module's commands to ``app``."""
    from syncron_p2p.commands import scan

    scan.register(app)

    from syncron_p2p.commands import mesh

    mesh.register(app)
