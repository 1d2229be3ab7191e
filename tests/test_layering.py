"""The dependency direction of DESIGN §2, enforced on the source itself.

The pure core (index, crypto, protocol, sync and the foundations) may not
import trio, socket, threading, time, watchdog, zeroconf or typer, directly or
via ``from x import y``. Those belong to the shell (``node/``, ``commands/``,
``cli.py``) and to the disk/thread adapters listed in ``SHELL_MODULES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "syncron_p2p"
FORBIDDEN = {"trio", "socket", "threading", "time", "watchdog", "zeroconf", "typer", "asyncio"}
PURE_PACKAGES = ("index", "crypto", "protocol", "sync")
PURE_FOUNDATIONS = ("errors.py", "paths.py", "config.py", "ids.py")
# Disk adapters that live beside the pure code they serve but do real I/O
# with worker threads. They are still forbidden trio/socket/zeroconf/typer.
SHELL_MODULES = {"index/scanner.py": {"threading", "time"}}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def pure_files() -> list[Path]:
    files = [PACKAGE / name for name in PURE_FOUNDATIONS if (PACKAGE / name).exists()]
    for pkg in PURE_PACKAGES:
        files.extend(sorted((PACKAGE / pkg).rglob("*.py")))
    return files


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_core_imports_no_io_frameworks(path: Path) -> None:
    rel = str(path.relative_to(PACKAGE))
    allowed = SHELL_MODULES.get(rel, set())
    bad = (imported_roots(path.read_text()) & FORBIDDEN) - allowed
    assert not bad, f"{rel} imports {sorted(bad)}; the pure core must stay sans-IO"


def test_checker_catches_a_forbidden_import() -> None:
    assert imported_roots("import trio\nfrom socket import socket\n") >= {"trio", "socket"}
    assert "time" in imported_roots("from time import monotonic")


def test_pure_core_is_not_empty() -> None:
    assert len(pure_files()) >= 5
