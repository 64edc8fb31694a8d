"""Which stored headers kwp passes on to a target: the one definition the
forwarder and the relay share.

Pure, so the config can check a ``forward.headers`` allowlist against it.
"""

from __future__ import annotations

import re
from typing import Mapping

# Never passed on, whatever the channel says: credentials meant for kwp or a
# proxy in front of it, what proxies say about the client (the target would
# believe it), requests to handle a POST as another method, and headers that
# would make the stored bytes mean something else.
NEVER_PASSED_ON = frozenset(
    {
        "cookie",
        "authorization",
        "forwarded",
        "x-real-ip",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "expect",
        "content-encoding",
    }
)
NEVER_PASSED_ON_PREFIXES = ("x-forwarded-",)
# Always passed on, whatever an allowlist says: the body is useless without it.
ALWAYS_PASSED_ON = frozenset({"content-type"})

# RFC 9110: a field name is a token; a field value holds no control
# character but horizontal tab (and, as sent, nothing beyond latin-1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]")


def never_passed_on(name: str) -> bool:
    """Whether the lower-cased header ``name`` is kept from every target."""
    return name in NEVER_PASSED_ON or name.startswith(NEVER_PASSED_ON_PREFIXES)


def sendable(name: str, value: str) -> bool:
    """Whether a header can go out as HTTP: a stored one that cannot (a name
    that is not a token, a control character in the value) would be refused
    by the HTTP client or by a strict target on every attempt."""
    return bool(_TOKEN.match(name)) and _BAD_VALUE.search(value) is None


def passed_on(headers: Mapping[str, str], allowed: frozenset[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The headers (lower-cased names) to pass on, and the names of those
    left out because they cannot be sent.  ``allowed``, when given, is the
    allowlist of names to pass (content-type always passes)."""
    kept: dict[str, str] = {}
    unsendable: list[str] = []
    for name, value in headers.items():
        if never_passed_on(name) or (allowed is not None and name not in allowed and name not in ALWAYS_PASSED_ON):
            continue
        if sendable(name, value):
            kept[name] = value
        else:
            unsendable.append(name)
    return kept, unsendable
