"""The bare Klein baseline of the benchmark: one route that reads the body,
parses it as JSON and answers 200, on the same default reactor as twistd.

    python bench/baseline.py PORT

It runs on a stock Site, which parses the Content-Type of every POST to look
for form fields; kwp turns that off, and so does bench/bare.py.
"""

import json
import sys

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site

app = Klein()


@app.route("/api/webhook/<string:name>", methods=["POST"])
def receive(request, name):
    try:
        json.loads(request.content.read())
    except ValueError:
        request.setResponseCode(422)
        return b'{"error":"invalid_json"}'
    request.setHeader(b"content-type", b"application/json")
    return b'{"status":"ok"}'


class QuietSite(Site):
    """No access log: the baseline is the framework's own cost."""

    noisy = False

    def log(self, request):
        pass


def main() -> None:
    reactor.listenTCP(int(sys.argv[1]), QuietSite(app.resource()), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
