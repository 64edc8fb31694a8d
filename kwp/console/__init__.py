"""The web console: static files shipped inside this package (``static/``),
served from memory under ``/ui/`` with headers that keep the pages to
themselves.  The pages call nothing but the JSON API, with the token the user
signed in with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from twisted.web import http
from twisted.web.resource import Resource

from kwp.errors import not_found

PREFIX = b"/ui/"
# Sent with every answer of the console, errors and redirects included.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}
CONTENT_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
}
# The files have no version in their names: the browser asks again each time
# and gets a 304 while the ETag holds, so an upgraded kwp is seen at once.
CACHE_CONTROL = b"no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


@cache
def load_assets() -> dict[bytes, Asset]:
    """Every file of ``static/`` by its path under it, read once."""
    assets = {}
    pending = [((), files(__name__) / "static")]
    while pending:
        parts, folder = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append(((*parts, entry.name), entry))
                continue
            kind = entry.name.rpartition(".")[2]
            if kind in CONTENT_TYPES:
                body = entry.read_bytes()
                etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
                assets["/".join((*parts, entry.name)).encode()] = Asset(body, CONTENT_TYPES[kind], etag)
    return assets


def secure(request) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def redirect(request) -> bytes:
    """Send the browser to the console."""
    secure(request)
    request.setResponseCode(http.FOUND)
    request.setHeader(b"location", PREFIX)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"The kwp console is at /ui/\n"


class Console(Resource):
    """The files of the console; ``/ui/`` is index.html.  HEAD answers the
    headers of GET."""

    isLeaf = True

    def __init__(self, assets: dict[bytes, Asset] | None = None):
        super().__init__()
        self._assets = load_assets() if assets is None else assets

    def render_GET(self, request) -> bytes:
        secure(request)
        path = b"/".join(request.postpath) or b"index.html"
        asset = self._assets.get(path)
        if asset is None:
            error = not_found("no such file in the console")
            request.setResponseCode(error.status)
            request.setHeader(b"content-type", b"application/json")
            return error.body()
        request.setHeader(b"content-type", asset.content_type)
        request.setHeader(b"cache-control", CACHE_CONTROL)
        if request.setETag(asset.etag) == http.CACHED:
            return b""
        return asset.body

    def render_HEAD(self, request) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
