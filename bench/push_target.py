"""The target of the push benchmark: a keep-alive HTTP/1.1 server on
127.0.0.1 that answers every POST 200 at once and counts the webhooks
delivered, by the "number" of their JSON body (0 .. COUNT-1).

    python bench/push_target.py PORT COUNT TIMEOUT

Once every number has arrived, or TIMEOUT seconds after start, it prints one
JSON line and exits: the deliveries, the distinct numbers, the repeated
ones, whether they arrived in order (each larger than the one before), and
the monotonic clock at the first and the last delivery.
"""

import asyncio
import json
import sys
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
REFUSED = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Tally:
    def __init__(self, count: int):
        self.count = count
        self.seen: set[int] = set()
        self.deliveries = 0
        self.repeated = 0
        self.in_order = True
        self.last = -1
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.complete = asyncio.get_running_loop().create_future()

    def delivered(self, body: bytes) -> None:
        number = json.loads(body)["number"]
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.deliveries += 1
        if number in self.seen:
            self.repeated += 1
        self.seen.add(number)
        self.in_order &= number > self.last
        self.last = number
        if len(self.seen) == self.count and not self.complete.done():
            self.complete.set_result(None)

    def summary(self) -> dict:
        return {
            "deliveries": self.deliveries,
            "distinct": len(self.seen),
            "repeated": self.repeated,
            "in_order": self.in_order,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


class Target(asyncio.Protocol):
    """Reads requests with a Content-Length body and answers each at once."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = None
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                self.transport.write(REFUSED)
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.tally.delivered(body)
            self.transport.write(ANSWER)


async def main(port: int, count: int, timeout: float) -> None:
    tally = Tally(count)
    server = await asyncio.get_running_loop().create_server(lambda: Target(tally), "127.0.0.1", port)
    try:
        await asyncio.wait_for(asyncio.shield(tally.complete), timeout)
    except asyncio.TimeoutError:
        pass
    server.close()
    print(json.dumps(tally.summary()), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
