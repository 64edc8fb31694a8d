"""The real smee-client (npm) as kwp's local agent: it reads the daemon's
stream in smee.io's format and posts each webhook to a local target,
including across a restart of the daemon, resuming from its last event id."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task, threads

from tests.support import npm_package, until

SMEE = "smee-client@5.0.0"
CONFIG = {
    "channels": [
        {
            "name": "gh",
            "token": "owner-token",
            "consumers": [{"name": "ci", "token": "ci-token"}, {"name": "audit", "token": "audit-token"}],
        }
    ]
}
# Consumer ci takes the pushes only.
CONFIG["channels"][0]["consumers"][0]["filter"] = "headers.\"x-github-event\" == 'push'"


@pytest.fixture(scope="module")
def smee_cli():
    return npm_package(SMEE) / "smee-client" / "bin" / "smee.js"


class Smee:
    """``smee --url SOURCE --target TARGET`` as a user runs it."""

    def __init__(self, cli, source: str, target: str):
        self.output = b""
        self.proc = subprocess.Popen(
            [shutil.which("node"), str(cli), "--url", source, "--target", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reader = self.proc.stdout

        def read():
            while chunk := reader.read1(4096):
                reactor.callFromThread(self._got, chunk)

        threads.deferToThread(read)

    def _got(self, chunk: bytes) -> None:
        self.output += chunk

    def connections(self) -> int:
        return self.output.count(b"Connected to ")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def post(daemon, n: int, event: str = "push"):
    response = await treq.post(
        f"{daemon.base}/api/webhook/gh",
        data=json.dumps({"n": n, "ref": "refs/heads/main"}).encode(),
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "Cookie": "session=secret",
            "X-Forwarded-For": "10.0.0.1",
        },
    )
    assert response.code == 200, await response.text()


@pytest_twisted.ensureDeferred
async def test_smee_client_receives_through_kwp_and_resumes_after_a_restart(daemon, target, smee_cli):
    kwp = daemon(CONFIG)
    local = target()
    source = f"{kwp.base}/api/webhook/gh/stream?format=smee&token=ci-token"
    smee = Smee(smee_cli, source, local.url)
    try:
        await until(lambda: smee.connections() == 1, 20, "smee-client connected")
        for n in range(1, 4):
            await post(kwp, n)
        # Not routed to ci: not on its stream.
        await post(kwp, 100, "issues")
        await local.wait_for(3, 20)

        await threads.deferToThread(kwp.stop)
        await until(lambda: b"Connection closed" in smee.output or b"Error" in smee.output, 20, "smee-client noticed")
        await threads.deferToThread(kwp.start)
        # Stored before smee-client is back (it waits 3 s before it reconnects).
        for n in range(4, 7):
            await post(kwp, n)
        assert smee.connections() == 1
        await until(lambda: smee.connections() == 2, 30, "smee-client reconnected")
        await local.wait_for(6, 20)
        for n in range(7, 9):
            await post(kwp, n)
        await local.wait_for(8, 20)
        # Nothing more comes, nothing twice.
        await task.deferLater(reactor, 1.0, lambda: None)
    finally:
        await threads.deferToThread(smee.stop)
    assert [json.loads(r["body"])["n"] for r in local.received] == list(range(1, 9)), smee.output.decode()
    headers = local.received[0]["headers"]
    assert headers["x-github-event"] == "push" and headers["content-type"] == "application/json"
    assert "cookie" not in headers and "x-forwarded-for" not in headers
    assert json.loads(local.received[0]["body"]) == {"n": 1, "ref": "refs/heads/main"}
