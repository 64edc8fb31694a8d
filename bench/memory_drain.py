"""The in-memory baseline of the drain: a small twisted.web server holding
COUNT webhooks in memory and streaming them to one GET as the JSON array
kwp's pull answers, in pages of 200 written as the transport takes them.

    python bench/memory_drain.py PORT COUNT BODY HEADERS_JSON

The items are encoded as kwp encodes them (the stored body spliced in as the
payload), so the ratio of the two is the cost of kwp's storage and streaming.
"""

import sys
import time

from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

PAGE = 200


def encode(item: tuple[int, bytes, bytes, float]) -> bytes:
    return b'{"id":%d,"headers":%s,"payload":%s,"received_at":%d}' % (item[0], item[1], item[2], int(item[3]))


@implementer(IPullProducer)
class Pages:
    """Writes the next page each time the transport asks for more."""

    def __init__(self, request, items: list):
        self.request = request
        self.items = items
        self.position = 0

    def resumeProducing(self):
        page = self.items[self.position : self.position + PAGE]
        separator = b"[" if self.position == 0 else b","
        self.position += PAGE
        if page:
            self.request.write(separator + b",".join(encode(item) for item in page))
        if len(page) < PAGE:
            if self.position == PAGE:
                self.request.write(b"[")
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
    port, count, body, headers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode()
    now = time.time()
    items = [(n, headers, body, now) for n in range(1, count + 1)]
    reactor.listenTCP(port, QuietSite(Drain(items)), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
