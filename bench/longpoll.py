"""Long-poll wake latency on a real `twistd -n kwp`: a GET with wait=30 is
held, a webhook is POSTed, and the time from the POST's 200 to the GET's
answer is measured.

    .venv/bin/python bench/longpoll.py [rounds]
"""

from __future__ import annotations

import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.drain import CHANNEL, TOKEN, start_daemon  # noqa: E402


def one_round(port: int) -> float:
    answered = {}

    def long_poll():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", f"/api/webhook/{CHANNEL}?wait=30", headers={"Authorization": f"Bearer {TOKEN}"})
        body = connection.getresponse().read()
        answered["at"] = time.monotonic()
        answered["body"] = body

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.2)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", f"/api/webhook/{CHANNEL}", body=b'{"x":1}', headers={"Content-Type": "application/json"})
    assert connection.getresponse().status == 200
    posted = time.monotonic()
    poller.join(40)
    assert answered["body"] != b"[]"
    return answered["at"] - posted


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp), Path(tmp) / "kwp.db")
        try:
            latencies = sorted(one_round(daemon.port) * 1000 for _ in range(rounds))
        finally:
            daemon.stop()
    print(
        f"long-poll wake after the POST's 200, {rounds} rounds: median {statistics.median(latencies):.1f} ms, "
        f"max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
