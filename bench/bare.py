"""The floor of the benchmark for one Twisted process: a bare twisted.web
Resource that parses the JSON body and answers 200.  No Klein, no storage,
no access log, and no form parsing of POST bodies (kwp turns it off too).

    python bench/bare.py PORT
"""

import json
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Receive(Resource):
    isLeaf = True

    def render_POST(self, request):
        try:
            json.loads(request.content.read())
        except ValueError:
            request.setResponseCode(422)
            return b'{"error":"invalid_json"}'
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"ok"}'


class QuietSite(Site):
    noisy = False

    def log(self, request):
        pass


def main() -> None:
    reactor.listenTCP(int(sys.argv[1]), QuietSite(Receive(), parsePOSTFormSubmission=False), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
