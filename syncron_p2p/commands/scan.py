"""``syncron-p2p scan FOLDER [--json] [--list]``: index a folder and report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from syncron_p2p.crypto.sealed import SealKeys
from syncron_p2p.errors import UsageError
from syncron_p2p.folder import INDEX_DB, check_folder
from syncron_p2p.ids import node_id
from syncron_p2p.index.db import Index
from syncron_p2p.index.scanner import Scanner, ScanResult
from syncron_p2p.index.secure_rules import folder_secure_key
from syncron_p2p.index.verify import VerifyResult, page_after, to_verify, verify_files
from syncron_p2p.mesh import load_or_create_identity
from syncron_p2p.node import control
from syncron_p2p.node.options import FolderLock
from syncron_p2p.paths import STATE_DIR


def _summary(result: ScanResult, index: Index, with_entries: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "files": result.files,
        "directories": result.directories,
        "symlinks": result.symlinks,
        "bytes": result.total_bytes,
        "hashed_files": result.hashed_files,
        "hashed_bytes": result.hashed_bytes,
        "changed": result.changed_count,
        "errors": [{"path": e.path, "reason": e.reason} for e in result.errors],
        "merkle_root": result.merkle_root.hex(),
        "node_id": index.node_id,
    }
    if with_entries:
        out["entries"] = [
            {
                "path": r.path,
                "type": r.type.name.lower(),
                "size": r.size,
                "hash": r.content_hash.hex(),
                "deleted": r.deleted,
            }
            for r in index.all()
        ]
    return out


def scan_folder(
    folder: Path, *, show_progress: bool = False, sync_git: bool = False
) -> tuple[ScanResult, dict[str, Any], Index]:
    """Scan ``folder`` (creating its state on first use); the caller closes the index."""
    root = check_folder(folder)
    me = node_id(load_or_create_identity(root).public)
    index = Index.open(root, me)
    if not show_progress:
        return Scanner(root, index, sync_git=sync_git, collect_changes=False).scan(), {}, index
    # rich is imported here: every command's start-up would pay for it (~40 ms)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("scanning"),
        BarColumn(bar_width=None),
        TextColumn("{task.fields[entries]} entries, {task.fields[mib]:.0f} MiB hashed"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("scan", total=None, entries=0, mib=0.0)

        def report(entries: int, hashed: int) -> None:
            progress.update(task, entries=entries, mib=hashed / 2**20)

        result = Scanner(
            root, index, sync_git=sync_git, progress=report, collect_changes=False
        ).scan()
    return result, {}, index


def verify_offline(root: Path) -> dict[str, Any]:
    """``verify`` with no node running on ``root``: read and report only."""
    if not (root / STATE_DIR / INDEX_DB).is_file():
        raise UsageError(f"nothing is recorded for {root} yet: run `syncron-p2p join` first")
    lock = FolderLock(root)
    lock.acquire()  # (a node that did not answer still holds it: say so)
    try:
        me = node_id(load_or_create_identity(root).public)
        key = folder_secure_key(root)
        keys = SealKeys.derive(key) if key is not None else None
        total = VerifyResult()
        with Index.open(root, me) as index:
            after: str | None = None
            while page := page_after(index, after):
                after = page[-1].path
                total.add(verify_files(root, to_verify(page), keys))
    finally:
        lock.release()
    return {**total.summary(), "running": False}


def _verify_report(folder: Path, reply: dict[str, Any]) -> bool:
    """Print ``verify``'s findings; True when every checked file is intact."""
    for path in reply["damaged"]:
        typer.echo(f"damaged: {path}")
    for path, why in reply["unreadable"]:
        typer.echo(f"unreadable: {path}: {why}", err=True)
    size = _human(reply["checked_bytes"])
    damaged = len(reply["damaged"])
    n = reply["checked"]
    line = f"checked {n} file{'' if n == 1 else 's'} ({size})"
    if reply["changed"]:
        line += f"; {reply['changed']} changed since the last scan (the next scan records them)"
    typer.echo(line)
    if reply["stopped"]:
        typer.echo("stopped before every file was checked (the node is stopping)")
    if not damaged:
        if n:
            typer.echo("every checked file holds what its record says")
        return not reply["unreadable"] and not reply["stopped"]
    if reply["running"]:
        typer.echo(
            f"{damaged} damaged file(s): the node is restoring them from its peers"
            " (its log says when each is done)"
        )
    else:
        typer.echo(
            f"{damaged} damaged file(s) (content changed although the files were not"
            f" edited: disk damage?). Start `syncron-p2p join {folder}` and run verify"
            " again to restore them from peers."
        )
    return False


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        folder: Annotated[Path, typer.Argument(help="A folder set up with join.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Read every file and compare it with what was recorded; a running node
        restores damaged files from its peers. Exit code 1 if a file is damaged
        or unreadable, or the check was cut short."""
        root = check_folder(folder)
        reply = control.query(root, {"cmd": "verify"}, timeout=None)
        if reply is None:
            reply = verify_offline(root)
        elif "checked" not in reply:
            raise UsageError(f"the node running on {folder} refused: {reply.get('error')}")
        if as_json:
            typer.echo(json.dumps(reply))
            intact = not (reply["damaged"] or reply["unreadable"] or reply["stopped"])
        else:
            intact = _verify_report(folder, reply)
        if not intact:
            raise SystemExit(1)

    @app.command()
    def scan(
        folder: Annotated[Path, typer.Argument(help="The folder to index.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        list_entries: Annotated[
            bool, typer.Option("--list", help="Include every entry (path-sorted).")
        ] = False,
        sync_git: Annotated[
            bool, typer.Option("--sync-git", help="Also index .git directories.")
        ] = False,
    ) -> None:
        """Index FOLDER (incremental, honours .gitignore) and print its merkle root."""
        result, _, index = scan_folder(
            folder, show_progress=not as_json and sys.stderr.isatty(), sync_git=sync_git
        )
        try:
            summary = _summary(result, index, list_entries)
        finally:
            index.close()
        if as_json:
            typer.echo(json.dumps(summary, indent=None))
            return
        typer.echo(
            f"{summary['files']} files, {summary['directories']} directories,"
            f" {summary['symlinks']} symlinks, {summary['bytes']} bytes"
        )
        typer.echo(
            f"hashed {summary['hashed_files']} files ({summary['hashed_bytes']} bytes),"
            f" {summary['changed']} changed"
        )
        for err in summary["errors"]:
            typer.echo(f"skipped {err['path']}: {err['reason']}", err=True)
        if list_entries:
            for e in summary["entries"]:
                mark = " (deleted)" if e["deleted"] else ""
                typer.echo(f"{e['type']:9} {e['size']:>12} {e['hash'][:16]} {e['path']}{mark}")
        typer.echo(f"merkle root {summary['merkle_root']}")
