"""The real daemon, a real `kwp relay` process and a real target on
127.0.0.1: everything arrives, byte for byte and in order, through restarts
of the relay (clean and killed), of the target and of the daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

KWP = str(Path(sys.executable).with_name("kwp"))
CONFIG = {"channels": [{"name": "open", "token": "open-token"}]}


class Target(Resource):
    """Records every POST; answers 500 while failing is set."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.received: list[tuple[bytes, dict]] = []
        self.failing = False
        self.port_number = 0
        self._port = None
        self._protocols = set()

    def render_POST(self, request):
        if self.failing:
            request.setResponseCode(500)
            return b"down"
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((request.content.read(), headers))
        return b"ok"

    def start(self) -> None:
        site = Site(self)
        build = site.buildProtocol

        def tracked(addr):
            protocol = build(addr)
            self._protocols.add(protocol)
            return protocol

        site.buildProtocol = tracked
        self._port = reactor.listenTCP(self.port_number, site, interface="127.0.0.1")
        self.port_number = self._port.getHost().port

    async def stop(self) -> None:
        """Down for good: no listener and no open connection."""
        await self._port.stopListening()
        for protocol in self._protocols:
            if getattr(protocol, "transport", None) is not None:
                protocol.transport.abortConnection()
        self._protocols.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}/hook"

    def bodies(self) -> list[bytes]:
        return [body for body, _ in self.received]


class RelayProcess:
    def __init__(self, workdir: Path, daemon, target: Target):
        self.args = [
            KWP, "relay", "--from", f"{daemon.base}/api/webhook/open", "--token", "open-token",
            "--to", target.url, "--lease", "2", "--wait", "5", "--batch", "4", "--timeout", "5",
        ]
        self.log_path = workdir / "relay.log"
        self.proc = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    async def stop(self, signum=signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return await deferToThread(self.proc.wait, 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def body(n: int) -> bytes:
    return b'{ "n" : %d ,\n "pad": [1.50, 2e3] }' % n


async def post(daemon, n: int) -> None:
    response = await treq.post(f"{daemon.base}/api/webhook/open", data=body(n),
                               headers={"Content-Type": "application/json", "X-Custom": f"c{n}"})
    assert response.code == 200, await response.text()


async def until(condition, what: str, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"not within {timeout}s: {what}")


def in_order_once_each(target: Target, count: int) -> bool:
    firsts = list(dict.fromkeys(target.bodies()))
    return firsts == [body(n) for n in range(count)]


@pytest.mark.timeout(150)
@pytest_twisted.ensureDeferred
async def test_relay_delivers_everything_in_order_through_restarts(daemon, tmp_path):
    kwp = await deferToThread(daemon, CONFIG)
    target = Target()
    target.start()
    relay = RelayProcess(tmp_path, kwp, target)
    relay.start()
    sent = 0

    async def send(n):
        nonlocal sent
        for _ in range(n):
            await post(kwp, sent)
            sent += 1

    try:
        await send(6)
        await until(lambda: len(set(target.bodies())) == sent, "first batch")
        assert target.received[0][1]["x-custom"] == "c0"
        assert target.received[0][1]["content-type"] == "application/json"
        assert target.received[0][1]["x-kwp-delivery-id"].isdigit()

        # The target fails, then goes away, then comes back.
        target.failing = True
        await send(3)
        await until(lambda: "target refused" in relay.log(), "a refused delivery")
        await target.stop()
        target.failing = False
        await task.deferLater(reactor, 1.5, lambda: None)
        target.start()
        await until(lambda: len(set(target.bodies())) == sent, "after the target's restart")

        # A clean stop of the relay, webhooks while it is away, a new relay.
        assert await relay.stop() == 0
        assert "relay stopped" in relay.log()
        await send(5)
        relay.start()
        await until(lambda: len(set(target.bodies())) == sent, "after the relay's restart")

        # The relay killed while the target fails: its leased batch comes back.
        target.failing = True
        await send(5)
        await until(lambda: relay.log().count("target refused") >= 3, "refusals before the kill")
        await relay.stop(signal.SIGKILL)
        target.failing = False
        relay.start()
        await until(lambda: len(set(target.bodies())) == sent, "after the relay was killed")

        # The daemon restarts under a running relay.
        await deferToThread(kwp.stop)
        await task.deferLater(reactor, 1.0, lambda: None)
        await deferToThread(kwp.start)
        await send(5)
        await until(lambda: len(set(target.bodies())) == sent, "after the daemon's restart")

        assert in_order_once_each(target, sent), [b[:8] for b in target.bodies()]
        assert await _acked_everything(kwp)
    finally:
        relay.kill()
        if target._port is not None and target._port.connected:
            await target.stop()
        print(relay.log())


async def _acked_everything(kwp) -> bool:
    for _ in range(40):
        listed = await treq.get(f"{kwp.base}/api/webhook/open/list", headers={"Authorization": "Bearer open-token"})
        if await listed.json() == []:
            return True
        await task.deferLater(reactor, 0.1, lambda: None)
    return False
