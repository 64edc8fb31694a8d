"""The in-memory baseline of the drain: a small twisted.web server holding
COUNT webhooks in memory, as the objects a JSON body parses to, and
streaming them to one GET as the JSON array kwp's pull answers (the same
keys in the same order, the same compact bytes), in pages of 200 written as
the transport takes them.

    python bench/memory_drain.py PORT COUNT BODY HEADERS_JSON

Each item is encoded with json.dumps, as such a server would.  Splicing
pre-encoded bytes instead, as kwp does with a stored body, streams faster
than the benchmark's client reads (over a million items a second, with the
server mostly idle): the figure would then be the client's.
"""

import json
import sys
import time

from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

PAGE = 200


ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(item: dict) -> bytes:
    return ENCODER.encode(item).encode()


@implementer(IPullProducer)
class Pages:
    """Writes the next page each time the transport asks for more."""

    def __init__(self, request, items: list):
        self.request = request
        self.items = items
        self.position = 0

    def resumeProducing(self):
        page = self.items[self.position : self.position + PAGE]
        if page:
            self.request.write((b"," if self.position else b"[") + b",".join(encode(item) for item in page))
        elif not self.position:
            self.request.write(b"[")
        self.position += len(page)
        if len(page) < PAGE:
            self.request.unregisterProducer()
            self.request.write(b"]")
            self.request.finish()
            del self.items[:]

    def stopProducing(self):
        pass


class Drain(Resource):
    isLeaf = True

    def __init__(self, items: list):
        super().__init__()
        self.items = items

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.registerProducer(Pages(request, self.items), False)
        return NOT_DONE_YET


class QuietSite(Site):
    noisy = False

    def log(self, request):
        pass


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    payload, headers, now = json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(time.time())
    items = [{"id": n, "headers": headers, "payload": payload, "received_at": now} for n in range(1, count + 1)]
    reactor.listenTCP(port, QuietSite(Drain(items)), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
