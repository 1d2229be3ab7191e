"""Mesh persistence (FOLDER/.syncron) and the init / invite / peers commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from syncron_p2p import cli
from syncron_p2p.commands import mesh as mesh_commands
from syncron_p2p.crypto.invite import decode_invite
from syncron_p2p.crypto.noise import generate_keypair
from syncron_p2p.errors import ConfigError, UsageError
from syncron_p2p.ids import node_id
from syncron_p2p.mesh import KEY_FILE, MESH_FILE, PEERS_FILE, Mesh

STATE = ".syncron"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_owner_only_files(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the key file
    try:
        mesh = Mesh.create(tmp_path)
    finally:
        os.umask(old)
    sdir = tmp_path / STATE
    assert mode(sdir) == 0o700
    for name in (KEY_FILE, MESH_FILE, PEERS_FILE):
        assert mode(sdir / name) == 0o600, name
    assert mesh.secure_key is not None
    assert len(mesh.secret) == 32
    loaded = Mesh.load(tmp_path)
    assert loaded.static == mesh.static
    assert (loaded.mesh_id, loaded.secret, loaded.secure_key) == (
        mesh.mesh_id,
        mesh.secret,
        mesh.secure_key,
    )
    assert loaded.node_id == node_id(mesh.static.public)
    assert not list((sdir / "tmp").iterdir())  # no temp files left behind


def test_join_shares_the_mesh_but_not_the_identity(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    first = Mesh.create(a)
    second = Mesh.join(b, first.invite_code())
    assert (second.mesh_id, second.secret) == (first.mesh_id, first.secret)
    assert second.secure_key is None
    assert second.node_id != first.node_id
    with pytest.raises(UsageError, match="secure key"):
        second.invite_code(secure=True)
    third = Mesh.join(c, first.invite_code(secure=True))
    assert third.secure_key == first.secure_key
    assert first.public_tag == third.public_tag
    assert first.secret.hex() not in first.public_tag


def test_init_refuses_an_existing_mesh(tmp_path: Path) -> None:
    Mesh.create(tmp_path)
    with pytest.raises(UsageError, match="already"):
        Mesh.create(tmp_path)


def test_peers_accept_remove_and_refuse(tmp_path: Path) -> None:
    mesh = Mesh.create(tmp_path)
    friend, foe = generate_keypair().public, generate_keypair().public
    assert mesh.is_allowed(friend)  # any holder of the secret is a member
    mesh.peers.accept(friend, "127.0.0.1:4000")
    mesh.peers.accept(foe)
    removed = mesh.peers.remove(node_id(foe).lower())  # typed ids are forgiving
    assert removed.removed
    reloaded = Mesh.load(tmp_path)
    assert reloaded.is_allowed(friend)
    assert not reloaded.is_allowed(foe)
    assert not reloaded.is_allowed(mesh.static.public)  # not ourselves
    peer = reloaded.peers.by_key(friend)
    assert peer is not None and peer.last_address == "127.0.0.1:4000"
    with pytest.raises(UsageError, match="removed"):
        reloaded.peers.accept(foe)
    with pytest.raises(UsageError, match="no peer"):
        reloaded.peers.remove(node_id(generate_keypair().public))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (MESH_FILE, b"{not json", "not valid JSON"),
        (MESH_FILE, b'{"format": 1, "mesh_id": "zz"}', "mesh_id"),
        (MESH_FILE, b'{"format": 99}', "unknown format"),
        (KEY_FILE, b"abc\n", "64 hex digits"),
        (PEERS_FILE, b'{"format": 1, "peers": [{"node_id": "x"}]}', "public_key"),
    ],
)
def test_corrupt_files_are_config_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    Mesh.create(tmp_path)
    (tmp_path / STATE / name).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        Mesh.load(tmp_path)


def test_missing_and_exposed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not set up"):
        Mesh.load(tmp_path)
    Mesh.create(tmp_path)
    key = tmp_path / STATE / KEY_FILE
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Mesh.load(tmp_path)
    key.unlink()
    with pytest.raises(ConfigError, match="missing"):
        Mesh.load(tmp_path)


# ------------------------------------------------------------------- CLI


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False)
    mesh_commands.register(app)
    return app


def run(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    code = result.exit_code
    if isinstance(result.exception, UsageError | ConfigError):
        code = 2 if isinstance(result.exception, UsageError) else 3
    return code, result.stdout, result.stderr


def test_cli_init_invite_peers(tmp_path: Path, app: typer.Typer) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    code, out, _ = run(app, "init", str(a))
    assert code == 0, out
    invite_line = next(line for line in out.splitlines() if line.startswith("invite code:"))
    invite = invite_line.split(":", 1)[1].strip()
    decode_invite(invite)
    assert Mesh.load(a).node_id in out

    code, out, _ = run(app, "invite", str(a))
    assert code == 0 and out.strip() == invite
    code, out, _ = run(app, "invite", str(a), "--secure")
    assert code == 0 and decode_invite(out.strip()).secure_key == Mesh.load(a).secure_key

    code, out, _ = run(app, "init", str(b), "--code", invite)
    assert code == 0
    assert Mesh.load(b).secret == Mesh.load(a).secret

    code, _, _ = run(app, "init", str(a))
    assert code == 2  # refuses an existing mesh

    peer = generate_keypair().public
    Mesh.load(a).peers.accept(peer, "127.0.0.1:1")
    code, out, _ = run(app, "peers", str(a), "--json")
    listing = json.loads(out)
    assert [p["node_id"] for p in listing["peers"]] == [node_id(peer)]
    code, out, _ = run(app, "peers", str(a), "--remove", node_id(peer))
    assert code == 0 and "Removed" in out
    assert not Mesh.load(a).is_allowed(peer)
    code, out, _ = run(app, "peers", str(a))
    assert "removed" in out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The real entry point's error mapping (cli.run), with only the mesh
    # commands registered, so this test does not depend on other commands.
    script = (
        "import sys\n"
        "from syncron_p2p import cli\n"
        "from syncron_p2p.commands import mesh\n"
        "mesh.register(cli.app)\n"
        "sys.exit(cli.run(lambda: cli.app(sys.argv[1:], standalone_mode=True)))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )


def test_mistyped_code_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    Mesh.create(good)
    code = Mesh.load(good).invite_code()
    typo = code[:7] + ("X" if code[7] != "X" else "Y") + code[8:]
    joiner = tmp_path / "joiner"
    joiner.mkdir()
    result = run_cli("init", str(joiner), "--code", typo)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("syncron-p2p: error: invite code")
    assert "Traceback" not in result.stderr
    assert not (joiner / STATE / MESH_FILE).exists()


def test_cli_errors_map_to_exit_codes(tmp_path: Path) -> None:
    assert cli.EXIT_CODES[0] == (UsageError, 2)
    result = run_cli("invite", str(tmp_path))
    assert result.returncode == 3 and "not set up" in result.stderr
    result = run_cli("peers", str(tmp_path / "absent"))
    assert result.returncode == 2 and "does not exist" in result.stderr
