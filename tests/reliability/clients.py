"""Blocking HTTP clients for the reliability tests: bursts of webhooks from
several threads, and draining a channel, against a kwp on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field


ADMIN = "admin-secret-token"
def request(port, method, path, body=None, headers=None, timeout=10.0):
    """(status, headers, body) of one request on its own connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post(port, channel, payload, headers=None, timeout=10.0):
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return request(port, "POST", f"/api/webhook/{channel}", json.dumps(payload).encode(), all_headers, timeout)


def drain(port, channel, token=ADMIN) -> list[dict]:
    """Every pending webhook of channel, taken in one plain pull."""
    status, _, body = request(port, "GET", f"/api/webhook/{channel}", headers={"Authorization": f"Bearer {token}"},
                              timeout=60)
    assert status == 200, body
    return json.loads(body)


def listed(port, channel, token=ADMIN) -> list[dict]:
    status, _, body = request(port, "GET", f"/api/webhook/{channel}/list?limit=10000",
                              headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert status == 200, body
    return json.loads(body)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Burst:
    """Threads posting {"marker": "t-n"} webhooks as fast as they are answered,
    each on a keep-alive connection, until stop() or `seconds` have passed.
    Only what was answered 200 is recorded; an error or a lost connection is
    counted and the thread carries on with a new connection."""

    port: int
    channel: str = "open"
    threads: int = 6
    seconds: float = 30.0
    headers: dict = field(default_factory=dict)
    answered: dict = field(default_factory=dict)
    failures: int = 0
    statuses: dict = field(default_factory=dict)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]

    def start(self) -> "Burst":
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        assert not any(w.is_alive() for w in self._workers)

    def wait_until_answered(self, count: int, timeout: float = 60) -> None:
        assert wait_for(lambda: len(self.answered) >= count, timeout), (len(self.answered), self.statuses)

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.seconds
        connection = None
        n = 0
        headers = {"Content-Type": "application/json", **self.headers}
        while not self._stop.is_set() and time.monotonic() < deadline:
            marker = f"{index}-{n}"
            n += 1
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("POST", f"/api/webhook/{self.channel}", json.dumps({"marker": marker}), headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failures += 1
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.01)
                continue
            with self._lock:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status == 200:
                    self.answered[marker] = json.loads(body)["id"]
        if connection is not None:
            connection.close()


def assert_every_200_stored_once(answered: dict, items: list[dict]) -> None:
    """set(answered 200) ⊆ set(stored), no marker stored twice, and each under
    the id its 200 named."""
    stored = [item["payload"]["marker"] for item in items]
    assert len(stored) == len(set(stored)), "a webhook was stored twice"
    ids = {item["payload"]["marker"]: item["id"] for item in items}
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} webhooks answered 200 were lost: {sorted(missing)[:10]}"
    assert all(ids[marker] == answered[marker] for marker in answered)
