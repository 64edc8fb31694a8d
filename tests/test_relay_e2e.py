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

from tests.forward_support import Target
from tests.support import until

KWP = str(Path(sys.executable).with_name("kwp"))
CONFIG = {"channels": [{"name": "open", "token": "open-token"}]}


class RelayProcess:
    def __init__(self, workdir: Path, daemon, target: Target):
        self.args = [
            KWP, "relay", "--from", f"{daemon.base}/api/webhook/open", "--token-file", str(workdir / "token"),
            "--to", target.url, "--lease", "2", "--wait", "5", "--batch", "4", "--timeout", "5",
        ]
        (workdir / "token").write_text("open-token\n")
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
                               headers={"Content-Type": "application/json", "X-Custom": f"c{n}", "Cookie": "s=1"})
    assert response.code == 200, await response.text()


def in_order_once_each(target: Target, count: int) -> bool:
    firsts = list(dict.fromkeys(target.delivered()))
    return firsts == [body(n) for n in range(count)]


@pytest.mark.timeout(150)
@pytest_twisted.ensureDeferred
async def test_relay_delivers_everything_in_order_through_restarts(daemon, tmp_path):
    kwp = await deferToThread(daemon, CONFIG)
    target = Target().listen()
    port = target.port.getHost().port
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
        await until(lambda: len(set(target.delivered())) == sent, 20, "first batch")
        first = target.received[0]["headers"]
        assert first["x-custom"] == "c0"
        assert first["content-type"] == "application/json"
        assert first["x-kwp-delivery-id"].startswith("open-") and first["x-kwp-delivery-id"][5:].isdigit()
        assert "cookie" not in first

        # The target fails, then goes away, then comes back.
        target.status = 500
        await send(3)
        await until(lambda: "target refused" in relay.log(), 20, "a refused delivery")
        await target.stop()
        target.status = 200
        await task.deferLater(reactor, 1.5, lambda: None)
        target.listen(port)
        await until(lambda: len(set(target.delivered())) == sent, 20, "after the target's restart")

        # A clean stop of the relay, webhooks while it is away, a new relay.
        assert await relay.stop() == 0
        assert "relay stopped" in relay.log()
        await send(5)
        relay.start()
        await until(lambda: len(set(target.delivered())) == sent, 20, "after the relay's restart")

        # The relay killed while the target fails: its leased batch comes back.
        target.status = 500
        refused = relay.log().count("target refused")
        await send(5)
        await until(lambda: relay.log().count("target refused") >= refused + 3, 20, "refusals before the kill")
        await relay.stop(signal.SIGKILL)
        target.status = 200
        relay.start()
        await until(lambda: len(set(target.delivered())) == sent, 20, "after the relay was killed")

        # The daemon restarts under a running relay.
        await deferToThread(kwp.stop)
        await task.deferLater(reactor, 1.0, lambda: None)
        await deferToThread(kwp.start)
        await send(5)
        await until(lambda: len(set(target.delivered())) == sent, 20, "after the daemon's restart")

        assert in_order_once_each(target, sent), [b[:8] for b in target.delivered()]
        await until(lambda: _acked_everything(kwp), 4, "every webhook acked")
    finally:
        relay.kill()
        await target.stop()
        print(relay.log())


async def _acked_everything(kwp) -> bool:
    listed = await treq.get(f"{kwp.base}/api/webhook/open/list", headers={"Authorization": "Bearer open-token"})
    return await listed.json() == []
