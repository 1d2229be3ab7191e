"""LAN-lab tests: real nodes on three hosts of a namespace LAN (shared/lanlab).

The nodes find each other by mDNS alone (no --peer), each bound to its own
lab address (``--mdns-interface``). Skipped only where namespaces are
impossible: not root, or no ``ip``. Nothing here touches the machine's real
network: every process runs through ``lanlab.sh exec``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodeproc import FAST, NodeProc, tree, wait_for

from syncron_p2p.sync.conflicts import CONFLICT_MARK

pytestmark = [pytest.mark.lanlab, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
LAB = REPO.parent / "shared" / "lanlab" / "lanlab.sh"
PORT = 22100


@dataclass
class Lab:
    env: dict[str, str]
    addrs: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LAB), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("the LAN lab needs root and iproute2 (network namespaces)")
    assert LAB.exists(), f"lanlab.sh not found at {LAB} (shared/ must be a sibling of the repo)"
    env = dict(os.environ, LANLAB_PREFIX=f"syt{os.getpid() % 100000}")
    up = subprocess.run([str(LAB), "up", "3"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    addrs = dict(line.split()[:2] for line in up.stdout.splitlines() if line.strip())
    try:
        yield Lab(env, addrs)
    finally:
        subprocess.run([str(LAB), "down"], env=env, capture_output=True, timeout=60)


@dataclass
class Cluster:
    lab: Lab
    nodes: dict[str, NodeProc]

    def folders(self) -> list[Path]:
        return [n.folder for n in self.nodes.values()]


def _start(lab: Lab, host: str, folder: Path, *extra: str) -> NodeProc:
    folder.mkdir(exist_ok=True)
    addr = lab.addrs[host]
    node = NodeProc(
        folder,
        "--listen",
        f"{addr}:{PORT}",
        "--mdns-interface",
        addr,
        "--rebrowse",
        "5",
        *FAST,
        *extra,
        prefix=[str(LAB), "exec", host],
        env=lab.env,
    )
    node.wait_listening()
    return node


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("lab")
    nodes: dict[str, NodeProc] = {}
    try:
        first = _start(lab, "h1", base / "h1")
        nodes["h1"] = first
        assert first.invite
        for host in ("h2", "h3"):
            nodes[host] = _start(lab, host, base / host, "--code", first.invite)
        yield Cluster(lab, nodes)
    finally:
        for node in nodes.values():
            if node.proc.poll() is None:
                node.stop(signal.SIGTERM)


def converged(folders: list[Path]) -> bool:
    trees = [tree(f) for f in folders]
    return all(t == trees[0] for t in trees[1:])


def test_mdns_alone_three_hosts_converge(cluster: Cluster) -> None:
    nodes = cluster.nodes
    wait_for(
        lambda: all(sum(p["connected"] for p in n.status()["peers"]) == 2 for n in nodes.values()),
        60,
        "three hosts connected through mDNS discovery",
    )
    for n in nodes.values():
        assert n.status()["mdns"] is True
        assert "--peer" not in n.args
    for host, node in nodes.items():
        (node.folder / f"from-{host}.txt").write_text(f"written on {host}\n")
    (nodes["h2"].folder / "dir").mkdir()
    (nodes["h2"].folder / "dir" / "nested.bin").write_bytes(os.urandom(300_000))
    wait_for(lambda: converged(cluster.folders()), 60, "convergence")
    t = tree(nodes["h3"].folder)
    assert {f"from-{h}.txt" for h in nodes} <= set(t)
    assert "dir/nested.bin" in t


def test_avahi_browse_sees_service_and_txt(cluster: Cluster) -> None:
    lab = cluster.lab
    started = lab.run("avahi", "h2")
    assert started.returncode == 0, started.stderr
    ids = {h: n.status()["node_id"] for h, n in cluster.nodes.items()}
    found: dict[str, str] = {}

    def browse() -> bool:
        out = lab.run("exec", "h2", "avahi-browse", "-rpt", "_syncron._tcp", timeout=30)
        for line in out.stdout.splitlines():
            fields = line.split(";")
            if fields[0] == "=" and len(fields) >= 10:
                found[fields[3]] = line
        return all(any(f'"id={i}"' in line for line in found.values()) for i in ids.values())

    wait_for(browse, 30, "avahi-browse to resolve all three services")
    line = next(v for v in found.values() if f'"id={ids["h1"]}"' in v)
    fields = line.split(";")
    assert fields[7] == cluster.lab.addrs["h1"]  # address
    assert fields[8] == str(PORT)
    assert '"v=1"' in fields[9]
    assert '"mesh=' in fields[9]
    mesh_json = (cluster.nodes["h1"].folder / ".syncron" / "mesh.json").read_text()
    secret = json.loads(mesh_json)["secret"]
    assert secret not in line  # the TXT record never carries the secret


def test_cut_edit_both_sides_heal_converges_keeping_both(cluster: Cluster) -> None:
    lab = cluster.lab
    h1, h3 = cluster.nodes["h1"], cluster.nodes["h3"]
    (h1.folder / "shared.txt").write_text("before the cut\n")
    wait_for(lambda: converged(cluster.folders()), 60, "shared.txt everywhere")
    assert lab.run("cut", "h3").returncode == 0
    try:
        wait_for(
            lambda: not any(p["connected"] for p in h3.status()["peers"]),
            30,
            "h3 to notice it is cut off",
        )
        (h1.folder / "shared.txt").write_text("edited on h1 during the cut\n")
        (h1.folder / "left.txt").write_text("only h1 side\n")
        (h3.folder / "shared.txt").write_text("edited on h3 during the cut\n")
        (h3.folder / "right.txt").write_text("only h3 side\n")
        wait_for(lambda: "left.txt" in tree(cluster.nodes["h2"].folder), 30, "h2 gets h1's edit")
        assert "right.txt" not in tree(h1.folder)
    finally:
        assert lab.run("heal", "h3").returncode == 0

    def healed() -> bool:
        if not converged(cluster.folders()):
            return False
        t = tree(h1.folder)
        contents = {v[1][0] for k, v in t.items() if v[0] == "file"}
        return (
            "left.txt" in t
            and "right.txt" in t
            and any(CONFLICT_MARK in k for k in t)
            and b"edited on h1 during the cut\n" in contents
            and b"edited on h3 during the cut\n" in contents
        )

    wait_for(healed, 90, "convergence after heal with both edits kept")
