"""mDNS discovery of mesh peers: ``_syncron._tcp.local.`` via python-zeroconf.

python-zeroconf runs its own thread (the blocking :class:`zeroconf.Zeroconf`
class). Every blocking call goes through ``trio.to_thread.run_sync``; browser
callbacks, which arrive on zeroconf's threads, are handed to trio with
``TrioToken.run_sync_soon`` into a memory channel. Nothing else crosses.

What is published (TXT): ``id`` (node id), ``v`` (protocol version),
``mesh`` (the public mesh tag, a hash of the mesh id; never the secret).
A stranger on the LAN learns that a syncron node of some mesh is there, and
nothing it could use to join (the channel stays silent to non-members).

The instance name and the mDNS host name are derived from the node id, so
they are unique on the LAN without depending on the machine's host name.

Interfaces: a node joins the mDNS group only on the interfaces it is given
(``--mdns-interface IP``); with none it uses every interface, which is what a
user on a LAN wants, and what tests must never do.

A running browser does not re-learn services after a partition (see
shared/lanlab/README.md), so :meth:`Discovery.rebrowse` starts a fresh
browser; the node calls it periodically and after a connection is lost.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass

import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from syncron_p2p.protocol.messages import PROTOCOL_VERSION

log = logging.getLogger("syncron.discovery")

SERVICE = "_syncron._tcp.local."
INFO_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True)
class Found:
    """A mesh member announced at ``addresses``:``port``."""

    name: str
    node_id: str
    addresses: tuple[str, ...]
    port: int


@dataclass(frozen=True, slots=True)
class Gone:
    name: str


Event = Found | Gone


def _local_ipv4() -> list[str]:
    import ifaddr

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


class Discovery:
    """Publish this node and browse for the others of the same mesh."""

    def __init__(
        self,
        *,
        node_id: str,
        mesh_tag: str,
        port: int,
        interfaces: list[str],
        listen_host: str,
    ) -> None:
        self.node_id = node_id
        self.mesh_tag = mesh_tag
        self.port = port
        self.interfaces = interfaces
        self.listen_host = listen_host
        compact = node_id.replace("-", "").lower()
        self.instance = f"syncron-{compact}.{SERVICE}"
        self.server = f"syncron-{compact}.local."
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._send, self._receive = trio.open_memory_channel[tuple[str, bool]](1024)
        self.overflowed = False

    def _addresses(self) -> list[str]:
        if self.listen_host not in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
            return [self.listen_host]
        if self.interfaces:
            return list(self.interfaces)
        return _local_ipv4()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        interfaces = list(self.interfaces) if self.interfaces else InterfaceChoice.All

        def build() -> Zeroconf:
            return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)

        self._zc = await trio.to_thread.run_sync(build)
        self._info = ServiceInfo(
            SERVICE,
            self.instance,
            addresses=[socket.inet_aton(a) for a in self._addresses()],
            port=self.port,
            properties={"id": self.node_id, "v": str(PROTOCOL_VERSION), "mesh": self.mesh_tag},
            server=self.server,
        )
        zc, info = self._zc, self._info
        await trio.to_thread.run_sync(
            lambda: zc.register_service(info, allow_name_change=True, cooperating_responders=True)
        )
        await self.rebrowse()
        log.info("mDNS: announced %s on %s", self.instance, ", ".join(self._addresses()))

    async def rebrowse(self) -> None:
        """Start a fresh browser (a running one misses services after a partition)."""
        zc = self._zc
        if zc is None:
            return
        old = self._browser

        def swap() -> ServiceBrowser:
            if old is not None:
                old.cancel()
            return ServiceBrowser(zc, SERVICE, handlers=[self._on_change])

        self._browser = await trio.to_thread.run_sync(swap)

    async def stop(self) -> None:
        zc, browser, info = self._zc, self._browser, self._info
        self._zc = self._browser = None
        if zc is None:
            return

        def close() -> None:
            if browser is not None:
                browser.cancel()
            if info is not None:
                try:
                    zc.unregister_service(info)
                except Exception as exc:  # goodbyes are best effort on shutdown
                    log.debug("mDNS: unregister failed: %s", exc)
            zc.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close)
        self._send.close()

    # -------------------------------------------------------------- bridge

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Runs on a zeroconf thread: hand the event to trio, nothing more."""
        token = self._token
        if token is None:
            return
        alive = state_change is not ServiceStateChange.Removed
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._deliver, name, alive)

    def _deliver(self, name: str, alive: bool) -> None:
        try:
            self._send.send_nowait((name, alive))
        except trio.WouldBlock:
            self.overflowed = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def events(self, out: trio.MemorySendChannel[Event]) -> None:
        """Resolve browser events into :class:`Found` / :class:`Gone` for the node."""
        async with self._receive:
            async for name, alive in self._receive:
                if name == self.instance:
                    continue
                if not alive:
                    await out.send(Gone(name))
                    continue
                found = await self._resolve(name)
                if found is not None:
                    await out.send(found)

    async def _resolve(self, name: str) -> Found | None:
        zc = self._zc
        if zc is None:
            return None
        info = await trio.to_thread.run_sync(
            lambda: zc.get_service_info(SERVICE, name, INFO_TIMEOUT_MS)
        )
        if info is None or not info.port:
            return None
        props = {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else ""
            )
            for k, v in info.properties.items()
        }
        if props.get("mesh") != self.mesh_tag or not props.get("id"):
            return None  # another mesh's node
        if props["id"] == self.node_id:
            return None
        addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
        if not addresses:
            return None
        return Found(name, props["id"], addresses, int(info.port))
