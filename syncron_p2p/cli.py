"""The ``syncron-p2p`` command line.

Thin on purpose: parse arguments, build the request, call the library, print.
Error families map to messages and exit codes here and nowhere else:

=====================  =========  ===========================================
error                  exit code  meaning
=====================  =========  ===========================================
UsageError             2          the user asked for something impossible
ConfigError            3          stored state is unusable
RemoteProtocolError    4          a peer misbehaved (only in one-shot commands)
other SyncronError     1          anything else we raised on purpose
KeyboardInterrupt      130        Ctrl-C
=====================  =========  ===========================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import typer

from syncron_p2p.errors import (
    ConfigError,
    RemoteProtocolError,
    SyncronError,
    UsageError,
)

app = typer.Typer(
    name="syncron-p2p",
    help="Keep one folder identical on every machine of a LAN, peer to peer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (UsageError, 2),
    (ConfigError, 3),
    (RemoteProtocolError, 4),
    (SyncronError, 1),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit with ``code``."""
    typer.echo(f"syncron-p2p: error: {message}", err=True)
    raise SystemExit(code)


def _register() -> None:
    # Each command lives in its own module under syncron_p2p.commands; they
    # register themselves on ``app`` when imported.
    from syncron_p2p.commands import register_all

    register_all(app)


def run(entry: Callable[[], object]) -> int:
    """Run ``entry`` mapping our error families to one line and an exit code."""
    try:
        entry()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        typer.echo("syncron-p2p: interrupted", err=True)
        return 130
    except SyncronError as exc:
        for family, code in EXIT_CODES:
            if isinstance(exc, family):
                typer.echo(f"syncron-p2p: error: {exc}", err=True)
                return code
    return 0


def main() -> None:
    """Console-script entry point."""
    _register()
    sys.exit(run(lambda: app(standalone_mode=True)))
