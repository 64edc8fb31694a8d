"""Who may send to a channel: client IPs, secrets, signatures and providers.

Pure functions over a request's peer address, headers, body bytes and the
current time (CONTRACT §4.1 steps 2, 3 and 7, §4.3 and §5.3).  Conventions:

- ``headers`` maps lower-cased names to values, multi-valued headers joined
  with ", ";
- ``body`` is the raw request body;
- ``now`` is a unix time passed in by the caller, never read here.

Every comparison with a secret or a signature is constant-time
(:func:`hmac.compare_digest`), and a malformed or missing header is a
``False``, never an exception.  Nothing here puts a secret or an expected
signature into a message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from kwp.config import Channel, Forward, Network
from kwp.templates import Template, TemplateError

__all__ = [
    "NotSigned",
    "PRESETS",
    "REFUSED",
    "Refused",
    "Scheme",
    "Signed",
    "client_ip",
    "delivery_id",
    "ip_allowed",
    "meta_handshake",
    "plain_ok",
    "scheme_for",
    "sign",
    "sender_headers",
    "sign_forward",
    "forward_signature",
    "forward_signature_names",
    "signature_ok",
    "slack_url_verification",
]

Headers = Mapping[str, str]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TOLERANCE_SECONDS = 300
MAX_DELIVERY_ID_LENGTH = 256
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")
_TIMESTAMP = re.compile(r"[0-9]{1,15}\Z")


# --- client IP (§4.1 step 2) --------------------------------------------------


def _parse_ip(text: str) -> IPAddress | None:
    """An address from "1.2.3.4", "1.2.3.4:80", "::1", "[::1]" or "[::1]:80".

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) come back as IPv4.  Anything
    else (empty, "unknown", a host name, a bad port) is None.
    """
    text = text.strip()
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":[0-9]{1,5}", port)):
            return None
        text = address
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not re.fullmatch(r"[0-9]{1,5}", port):
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in_networks(ip: IPAddress, networks: Iterable[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def ip_allowed(ip: str, networks: Iterable[Network]) -> bool:
    """Whether ``ip`` is in one of ``networks`` (plain membership: empty → False).

    The caller skips the check for a channel without ``allowed-ips``.  An
    IPv4-mapped IPv6 address matches the IPv4 networks; an unparseable address
    matches nothing.
    """
    address = _parse_ip(ip)
    return address is not None and _in_networks(address, networks)


def client_ip(peer: str, headers: Headers, trusted_proxies: tuple[Network, ...]) -> str:
    """The address a webhook came from (CONTRACT §4.1 step 2).

    A peer that is not a trusted proxy is the client, whatever the headers say.
    Behind trusted proxies, X-Forwarded-For is read from the right (each proxy
    appends the address it saw) and the first address that is not itself a
    trusted proxy is the client.  When every entry is a trusted proxy, or the
    header is absent, a valid X-Real-IP wins, else the left-most trusted hop.

    A malformed entry ("unknown", a host name, an empty item) stops the walk
    and the result is the hop to its right, the last trusted proxy seen (the
    peer itself when the garbage is the right-most entry).  Only a trusted
    proxy can have written anything right of the real client's address (a
    client can only prepend), so garbage there means a proxy misbehaves or
    passes client headers through; answering with that proxy's own address
    grants nothing the proxy could not get by sending without the header, and
    never trusts what a client wrote.

    The result is normalised (IPv4-mapped IPv6 as IPv4, no port); a peer that
    is not an IP address at all is returned unchanged and matches no network.
    """
    hop = _parse_ip(peer)
    if hop is None:
        return peer
    if not _in_networks(hop, trusted_proxies):
        return str(hop)
    forwarded = headers.get("x-forwarded-for")
    if forwarded is not None:
        for entry in reversed(forwarded.split(",")):
            address = _parse_ip(entry)
            if address is None:
                return str(hop)
            hop = address
            if not _in_networks(hop, trusted_proxies):
                return str(hop)
    real_ip = _parse_ip(headers.get("x-real-ip") or "")
    return str(real_ip if real_ip is not None else hop)


# --- schemes and providers (§4.3) -------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """How a channel's senders prove who they are.

    ``kind`` is "none" (nothing checked), "plain" (a header equal to a secret),
    "hmac" (hex HMAC-SHA256 of the body, through the channel's templates) or
    a provider name.  ``header`` is the header carrying the secret or the
    signature, spelled for display (look it up lower-cased).  A delivery id,
    when the sender gives one, is in ``delivery_header`` or in the top-level
    ``delivery_field`` of the JSON body; when ``delivery_scope`` names a
    header, its value is part of the id (several GitHub hooks send one event
    with one delivery id, each with its own hook id).  Timestamped schemes read
    ``timestamp_header`` (Stripe puts its timestamp inside the signature
    header) and refuse anything more than ``tolerance`` seconds away from now.
    """

    kind: str
    header: str | None = None
    delivery_header: str | None = None
    delivery_field: str | None = None
    delivery_scope: str | None = None
    timestamp_header: str | None = None
    tolerance: int | None = None

    @property
    def plain(self) -> bool:
        """Checked from the headers alone, before the body is read."""
        return self.kind in _PLAIN_KINDS

    @property
    def signed(self) -> bool:
        """Based on an HMAC of the body: verified after it, and /sign works."""
        return self.kind in _VERIFIERS


NONE = Scheme("none")

PRESETS: Mapping[str, Scheme] = {
    "github": Scheme(
        "github", "X-Hub-Signature-256", delivery_header="X-GitHub-Delivery", delivery_scope="X-GitHub-Hook-ID"
    ),
    "gitlab": Scheme("gitlab", "X-Gitlab-Token", delivery_header="X-Gitlab-Event-UUID"),
    "telegram": Scheme("telegram", "X-Telegram-Bot-Api-Secret-Token", delivery_field="update_id"),
    "stripe": Scheme("stripe", "Stripe-Signature", delivery_field="id", tolerance=TOLERANCE_SECONDS),
    "slack": Scheme(
        "slack",
        "X-Slack-Signature",
        delivery_field="event_id",
        timestamp_header="X-Slack-Request-Timestamp",
        tolerance=TOLERANCE_SECONDS,
    ),
    "shopify": Scheme("shopify", "X-Shopify-Hmac-Sha256", delivery_header="X-Shopify-Webhook-Id"),
    "standard-webhooks": Scheme(
        "standard-webhooks",
        "webhook-signature",
        delivery_header="webhook-id",
        timestamp_header="webhook-timestamp",
        tolerance=TOLERANCE_SECONDS,
    ),
    "meta": Scheme("meta", "X-Hub-Signature-256"),
}

_PLAIN_KINDS = frozenset({"plain", "gitlab", "telegram"})


def scheme_for(channel: Channel) -> Scheme:
    """The effective verification of a channel.

    A ``provider`` fixes the algorithm, the delivery id and the tolerance;
    ``secret-header`` given alongside it renames the header that carries the
    token or signature (for a sender behind something that renames it).
    ``secret-type`` and the secret templates apply only to channels without a
    provider.  Without a provider, ``secret-header`` selects "plain" or
    "hmac" by ``secret-type``; without either, nothing is checked.

    Every check of a request asks for it, so it is computed once per
    combination of the three keys.
    """
    return _scheme(channel.provider, channel.secret_header, channel.secret_type)


@functools.lru_cache(maxsize=256)
def _scheme(provider: str | None, secret_header: str | None, secret_type: str) -> Scheme:
    if provider is not None:
        preset = PRESETS[provider]
        return replace(preset, header=secret_header) if secret_header else preset
    if secret_header:
        kind = "hmac" if secret_type == "hmac-sha256" else "plain"
        return Scheme(kind, secret_header)
    return NONE


def _header(headers: Headers, name: str | None) -> str | None:
    return headers.get(name.lower()) if name else None


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _equals_any(value: str, candidates: Iterable[str]) -> bool:
    """Constant-time: every candidate is compared, whichever matches."""
    given = _bytes(value)
    results = [hmac.compare_digest(given, _bytes(c)) for c in candidates]
    return any(results)


def _hmac(secret: str | bytes, message: bytes) -> bytes:
    key = _bytes(secret) if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).digest()


def _hex_hmacs(secrets: Iterable[str], message: bytes) -> list[str]:
    return [_hmac(s, message).hex() for s in secrets]


def _fresh(timestamp: str, now: float, tolerance: int | None) -> bool:
    """A whole-seconds timestamp within ``tolerance`` of now, past or future."""
    return bool(_TIMESTAMP.match(timestamp)) and abs(now - int(timestamp)) <= (tolerance or 0)


# --- plain tokens (§4.1 step 3) ----------------------------------------------


def plain_ok(channel: Channel, headers: Headers) -> bool:
    """The header-only check: True unless a plain token is expected and absent/wrong.

    Applies to ``secret-type: plain`` channels with a ``secret-header`` and to
    the plain-token providers (gitlab, telegram); any secret of the channel's
    list is accepted.  A channel with nothing plain to check passes (its
    signature, if any, is checked by :func:`signature_ok` once the body is in).
    """
    scheme = scheme_for(channel)
    if not scheme.plain or not channel.secrets:
        return True
    value = _header(headers, scheme.header)
    return value is not None and _equals_any(value, channel.secrets)


# --- signatures (§4.1 step 7) ------------------------------------------------


Verifier = Callable[[Scheme, Channel, Headers, bytes, float], bool]


def _verify_hmac(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    raw = _header(headers, scheme.header)
    if raw is None:
        return False
    try:
        given = channel.extract_template.render(raw=raw) if channel.extract_template else raw
    except TemplateError:
        return False
    return _equals_any(given.lower(), _hex_hmacs(channel.secrets, body))


def _verify_sha256_prefixed(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    """GitHub and Meta: ``sha256=`` and the hex HMAC of the body."""
    value = _header(headers, scheme.header) or ""
    prefix, _, hex_digest = value.partition("=")
    if prefix != "sha256" or not _HEX_SHA256.match(hex_digest):
        return False
    return _equals_any(hex_digest.lower(), _hex_hmacs(channel.secrets, body))


def _verify_shopify(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    value = _header(headers, scheme.header)
    if not value:
        return False
    return _equals_any(value, (base64.b64encode(_hmac(s, body)).decode() for s in channel.secrets))


def _stripe_content(timestamp: str, body: bytes) -> bytes:
    return f"{int(timestamp)}.".encode() + body


def _verify_stripe(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    """``t=TIMESTAMP,v1=HEX[,v1=HEX...]`` over ``TIMESTAMP.BODY``; other schemes (v0) ignored."""
    timestamp, signatures = None, []
    for item in (_header(headers, scheme.header) or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and timestamp is None:
            timestamp = value
        elif key == "v1" and _HEX_SHA256.match(value):
            signatures.append(value.lower())
    if timestamp is None or not signatures or not _fresh(timestamp, now, scheme.tolerance):
        return False
    expected = _hex_hmacs(channel.secrets, _stripe_content(timestamp, body))
    return any([_equals_any(given, expected) for given in signatures])


def _slack_content(timestamp: str, body: bytes) -> bytes:
    return f"v0:{timestamp}:".encode() + body


def _verify_slack(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    """``v0=HEX`` over ``v0:TIMESTAMP:BODY``, the timestamp in its own header."""
    timestamp = _header(headers, scheme.timestamp_header) or ""
    value = _header(headers, scheme.header) or ""
    version, _, hex_digest = value.partition("=")
    if version != "v0" or not _HEX_SHA256.match(hex_digest) or not _fresh(timestamp, now, scheme.tolerance):
        return False
    return _equals_any(hex_digest.lower(), _hex_hmacs(channel.secrets, _slack_content(timestamp, body)))


# Svix, and the senders built on it (Clerk, Resend), spell the Standard
# Webhooks headers with their own prefix; the official svix library reads both.
_SVIX_SPELLING = {"webhook-id": "svix-id", "webhook-timestamp": "svix-timestamp", "webhook-signature": "svix-signature"}


def _standard_header(headers: Headers, name: str | None) -> str | None:
    """A Standard Webhooks header, else the same header in Svix's spelling."""
    value = _header(headers, name)
    if value is None and name:
        alias = _SVIX_SPELLING.get(name.lower())
        value = headers.get(alias) if alias else None
    return value


def _standard_webhooks_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_``-prefixed (or bare) base64 secret, as the
    reference library decodes it; None when it is not base64."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "==")
    except (binascii.Error, ValueError):
        return None
    return key or None


def _standard_webhooks_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return _bytes(f"{msg_id}.{timestamp}.") + body


def _standard_webhooks_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    return base64.b64encode(_hmac(key, _standard_webhooks_content(msg_id, timestamp, body))).decode()


def _verify_standard_webhooks(scheme: Scheme, channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    """webhook-id, webhook-timestamp and space-separated ``v1,BASE64`` signatures
    (or svix-id, svix-timestamp, svix-signature)."""
    msg_id = _standard_header(headers, scheme.delivery_header)
    timestamp = _standard_header(headers, scheme.timestamp_header) or ""
    if not msg_id or not _fresh(timestamp, now, scheme.tolerance):
        return False
    signatures = []
    for item in (_standard_header(headers, scheme.header) or "").split(" "):
        version, _, encoded = item.partition(",")
        if version == "v1":
            try:
                signatures.append(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                continue
    if not signatures:
        return False
    content = _standard_webhooks_content(msg_id, timestamp, body)
    keys = [k for k in map(_standard_webhooks_key, channel.secrets) if k is not None]
    expected = [_hmac(k, content) for k in keys]
    return any([hmac.compare_digest(given, e) for given in signatures for e in expected])


_VERIFIERS: Mapping[str, Verifier] = {
    "hmac": _verify_hmac,
    "github": _verify_sha256_prefixed,
    "meta": _verify_sha256_prefixed,
    "shopify": _verify_shopify,
    "stripe": _verify_stripe,
    "slack": _verify_slack,
    "standard-webhooks": _verify_standard_webhooks,
}


def signature_ok(channel: Channel, headers: Headers, body: bytes, now: float) -> bool:
    """The signature check run once the body is read (CONTRACT §4.1 step 7).

    True for channels without a signature (plain tokens are :func:`plain_ok`'s
    job).  For a signed scheme, True only when some secret of the channel
    verifies the request and, for timestamped schemes, the timestamp is within
    the tolerance in either direction.  A signed scheme without any secret
    refuses everything: there is no key to check against.
    """
    scheme = scheme_for(channel)
    verifier = _VERIFIERS.get(scheme.kind)
    if verifier is None:
        return True
    return bool(channel.secrets) and verifier(scheme, channel, headers, body, now)


# --- delivery ids (§4.3 deduplication) ---------------------------------------


def delivery_id(channel: Channel, headers: Headers, body_json: Any) -> str | None:
    """The sender's id for this delivery, the same on its retries; None if none.

    From a header (GitHub X-GitHub-Delivery, GitLab X-Gitlab-Event-UUID,
    Shopify X-Shopify-Webhook-Id, Standard Webhooks webhook-id or svix-id) or
    from the body (Telegram ``update_id``, the Stripe event ``id``, Slack's
    ``event_id`` of an event_callback).  GitHub's is prefixed with the
    X-GitHub-Hook-ID that sent it, when there is one.  Meta and channels
    without a provider have none.  An empty id, one longer than 256
    characters, or one that is not Unicode text (a lone surrogate, which
    JSON's ``\\u`` escapes allow), is None.
    """
    scheme = scheme_for(channel)
    value: Any = None
    if scheme.delivery_header:
        if scheme.kind == "standard-webhooks":
            value = _standard_header(headers, scheme.delivery_header)
        else:
            value = _header(headers, scheme.delivery_header)
        scope = _header(headers, scheme.delivery_scope)
        if value and scope:
            value = f"{scope}/{value}"
    elif scheme.delivery_field and isinstance(body_json, dict):
        value = body_json.get(scheme.delivery_field)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_DELIVERY_ID_LENGTH or not _is_text(value):
        return None
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- signing (§5.3 /sign and the forwarder) ----------------------------------


class NotSigned(ValueError):
    """The channel does not use an HMAC signature, so there is nothing to sign with."""


class Signed(NamedTuple):
    """What :func:`sign` produced.

    ``signature`` is the bare signature (hex, or base64 for Shopify and
    Standard Webhooks), ``header_name``/``header_value`` the signature header
    as the sender would set it, and ``headers`` every header a request needs
    to verify, the signature header included: Slack's timestamp header,
    Standard Webhooks' webhook-id and webhook-timestamp.
    """

    signature: str
    header_name: str
    header_value: str
    headers: Mapping[str, str]


def sign(channel: Channel, body: bytes, now: float, msg_id: str | None = None) -> Signed:
    """Sign ``body`` as the channel's sender would, with its first secret.

    ``now`` becomes the timestamp of timestamped schemes.  Standard Webhooks
    also signs a message id: ``msg_id`` when given, else ``msg_`` and 32 hex
    digits derived from the timestamp and the body, so the same body signed at
    another second is another message (and not taken for a redelivery).
    Raises :class:`NotSigned` for a channel without an HMAC scheme or secret.
    """
    scheme = scheme_for(channel)
    if not scheme.signed or not channel.secrets or not scheme.header:
        raise NotSigned(f"channel {channel.name!r} does not verify an HMAC signature")
    secret = channel.secrets[0]
    timestamp = str(int(now))
    extra: dict[str, str] = {}
    if scheme.kind == "hmac":
        signature = _hmac(secret, body).hex()
        value = sign_forward(channel.sign_template, secret, body)
    elif scheme.kind in ("github", "meta"):
        signature = _hmac(secret, body).hex()
        value = f"sha256={signature}"
    elif scheme.kind == "shopify":
        signature = value = base64.b64encode(_hmac(secret, body)).decode()
    elif scheme.kind == "stripe":
        signature = _hmac(secret, _stripe_content(timestamp, body)).hex()
        value = f"t={timestamp},v1={signature}"
    elif scheme.kind == "slack":
        signature = _hmac(secret, _slack_content(timestamp, body)).hex()
        value = f"v0={signature}"
        extra["X-Slack-Request-Timestamp"] = timestamp
    elif scheme.kind == "standard-webhooks":
        key = _standard_webhooks_key(secret)
        if key is None:
            raise NotSigned(f"channel {channel.name!r}: the webhook secret is not base64")
        if msg_id is None:
            msg_id = "msg_" + hashlib.sha256(f"{timestamp}.".encode() + body).hexdigest()[:32]
        signature = _standard_webhooks_signature(key, msg_id, timestamp, body)
        value = f"v1,{signature}"
        extra.update({"webhook-id": msg_id, "webhook-timestamp": timestamp})
    else:
        raise ValueError(f"channel {channel.name!r}: cannot sign for scheme {scheme.kind!r}")
    return Signed(signature, scheme.header, value, {scheme.header: value, **extra})


def sender_headers(channel: Channel, body: bytes, now: float, secret: str | None = None) -> dict[str, str]:
    """The headers a legitimate sender of ``body`` would add (lower-cased):
    the plain token or the signature, made with ``secret`` when given, else
    with the channel's first secret.  Empty for a channel that checks nothing."""
    if secret is not None:
        channel = replace(channel, secrets=(secret,))
    scheme = scheme_for(channel)
    if not channel.secrets or not scheme.header:
        return {}
    if scheme.plain:
        return {scheme.header.lower(): channel.secrets[0]}
    return {name.lower(): value for name, value in sign(channel, body, now).headers.items()}


def sign_forward(sign_template: Template | None, secret: str, body: bytes) -> str:
    """The hmac signature header value: hex HMAC-SHA256 of the body,
    rendered through ``sign_template`` as ``signature`` (bare hex without one)."""
    signature = _hmac(secret, body).hex()
    return sign_template.render(signature=signature) if sign_template else signature


# What a sender may have signed a webhook with in the Standard Webhooks way
# (and Svix's spelling of it): replaced when kwp signs that way itself.
_STANDARD_WEBHOOKS_HEADERS = frozenset(
    f"{prefix}-{name}" for prefix in ("webhook", "svix") for name in ("id", "timestamp", "signature")
)


def forward_signature_names(forward: Forward) -> frozenset[str]:
    """The lower-cased names of stored headers that the forward's signature
    replaces (so a target never gets two)."""
    if forward.sign_scheme == "standard-webhooks":
        return _STANDARD_WEBHOOKS_HEADERS
    return frozenset({forward.sign_header.lower()}) if forward.sign_header else frozenset()


def forward_signature(forward: Forward, body: bytes, msg_id: str, now: float) -> dict[str, str]:
    """The headers signing one forward attempt, made at ``now``.

    ``hmac``: ``sign-header`` with :func:`sign_forward` (nothing without a
    sign-header).  ``standard-webhooks``: webhook-id ``msg_id``,
    webhook-timestamp ``now`` and webhook-signature ``v1,`` and the base64
    HMAC of ``msg_id.timestamp.body`` keyed with the ``whsec_`` sign-secret,
    so a target accepts the attempt however long after the receive it is made.
    """
    if forward.sign_scheme == "standard-webhooks":
        timestamp = str(int(now))
        key = _standard_webhooks_key(forward.sign_secret)
        signature = _standard_webhooks_signature(key, msg_id, timestamp, body)
        return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}
    if forward.sign_header:
        return {forward.sign_header: sign_forward(forward.sign_template, forward.sign_secret, body)}
    return {}


# --- handshakes (§4.3) -------------------------------------------------------


class Refused:
    """The answer to a Meta handshake with a wrong or missing verify token (→ 403)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED = Refused()


def meta_handshake(channel: Channel, args: Mapping[str, str]) -> str | None | Refused:
    """Meta's subscription check: ``GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..``.

    Returns the challenge to echo when the token equals the channel's
    ``verify-token``; :data:`REFUSED` for a handshake that does not qualify
    (wrong or missing token, another mode, no challenge, or a meta channel
    without ``verify-token``); None when this is no handshake (a channel
    without the meta provider, or no ``hub.mode`` argument), so the GET is
    the pull API.
    """
    if channel.provider != "meta" or "hub.mode" not in args:
        return None
    token = args.get("hub.verify_token")
    challenge = args.get("hub.challenge")
    if (
        args["hub.mode"] != "subscribe"
        or channel.verify_token is None
        or token is None
        or challenge is None
        or not _equals_any(token, [channel.verify_token])
    ):
        return REFUSED
    return challenge


def slack_url_verification(channel: Channel, body_json: Any) -> str | None:
    """The challenge to echo for Slack's ``{"type": "url_verification", "challenge": ..}``.

    Call it only AFTER :func:`signature_ok` accepted the request: Slack signs
    this request like any other, and echoing an unsigned challenge would let
    anyone make the endpoint look verified.  None for any other body or a
    channel without the slack provider.
    """
    if channel.provider != "slack" or not isinstance(body_json, dict):
        return None
    challenge = body_json.get("challenge")
    if body_json.get("type") != "url_verification" or not isinstance(challenge, str):
        return None
    return challenge
