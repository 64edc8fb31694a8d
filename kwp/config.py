"""The configuration model: YAML loading, validation and redaction.

Pure: no Twisted here, so it loads fast in ``kwp check-config`` and in tests.
Every problem found is collected, so one run reports all of them.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from kwp.headers import never_passed_on
from kwp.routing import Filter, compile_filter
from kwp.templates import Template, TemplateError, compile_template

MiB = 1024 * 1024
DEFAULT_BODY_LIMIT = 256 * 1024
MAX_BODY_LIMIT = 100 * MiB
DEFAULT_DEDUP_WINDOW = 86400
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
CONSUMER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
# The one consumer of a channel without ``consumers``.
DEFAULT_CONSUMER = "default"
DEFAULT_RETENTION_HOURS = 72.0
DEFAULT_HISTORY_MAX = 100_000
# What Telegram's setWebhook accepts as secret_token.
TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")
TELEGRAM_HEADER = "x-telegram-bot-api-secret-token"
# How long a node holds a push consumer's forwarding lease without renewing it.
DEFAULT_LEASE_SECONDS = 10.0

SECRET_TYPES = ("plain", "hmac-sha256")
SIGN_SCHEMES = ("hmac", "standard-webhooks")
PROVIDERS = (
    "github",
    "gitlab",
    "telegram",
    "stripe",
    "slack",
    "shopify",
    "standard-webhooks",
    "meta",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Forward:
    url: str
    interval_seconds: float = 30.0
    expected_status: int | None = None
    timeout_seconds: float = 15.0
    max_attempts: int | None = None
    max_delay_seconds: float = 3600.0
    concurrency: int = 1
    sign_header: str | None = None
    sign_secret: str | None = None
    sign_scheme: str = "hmac"
    sign_template: Template | None = None
    headers: frozenset[str] | None = None


@dataclass(frozen=True)
class Consumer:
    """A destination of a channel's webhooks, with its own queue: pulled
    (with its own ``token``, or the channel's) or pushed (``forward``)."""

    name: str
    token: str | None = None
    forward: Forward | None = None
    filter: Filter | None = None
    max_queue: int | None = None
    # The consumer of a channel without ``consumers``.
    implicit: bool = False


@dataclass(frozen=True)
class Channel:
    name: str
    token: str
    secrets: tuple[str, ...] = ()
    secret_header: str | None = None
    secret_type: str = "plain"
    extract_template: Template | None = None
    sign_template: Template | None = None
    provider: str | None = None
    verify_token: str | None = None
    dedup_window_seconds: int = DEFAULT_DEDUP_WINDOW
    max_queue: int | None = None
    max_body_size: int | None = None
    allowed_ips: tuple[Network, ...] = ()
    note: str | None = None
    monitoring_metrics: bool = True
    forward: Forward | None = None
    consumers: tuple[Consumer, ...] = ()
    retention_hours: float | None = None
    history_max: int | None = None

    def __post_init__(self) -> None:
        if not self.consumers:
            implicit = Consumer(DEFAULT_CONSUMER, forward=self.forward, max_queue=self.max_queue, implicit=True)
            object.__setattr__(self, "consumers", (implicit,))

    @property
    def named_consumers(self) -> bool:
        """Whether the config names the consumers (else one implicit ``default``)."""
        return not self.consumers[0].implicit

    def consumer(self, name: str) -> Consumer | None:
        return next((c for c in self.consumers if c.name == name), None)


@dataclass(frozen=True)
class Server:
    default_body_limit: int = DEFAULT_BODY_LIMIT
    trusted_proxies: tuple[Network, ...] = ()
    ignored_headers: frozenset[str] = frozenset()
    admin_token: str | None = None
    metrics: bool = False
    retention_hours: float = DEFAULT_RETENTION_HOURS
    history_max: int = DEFAULT_HISTORY_MAX
    metrics_token: str | None = None
    max_waiters_per_token: int = 100
    lease_seconds: float = DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class Config:
    server: Server = field(default_factory=Server)
    channels: tuple[Channel, ...] = ()
    path: str = "config.yml"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.channels})

    def channel(self, name: str) -> Channel | None:
        return self._by_name.get(name)

    def body_limit(self, channel: Channel) -> int:
        return channel.max_body_size or self.server.default_body_limit

    @cached_property
    def largest_body_limit(self) -> int:
        return max([self.server.default_body_limit] + [self.body_limit(c) for c in self.channels])


class _Reader:
    """Reads one mapping of the YAML document, recording errors with their place."""

    def __init__(self, errors: list[str], where: str, data: Any, known: tuple[str, ...], aliases=None):
        self.errors = errors
        self.where = where
        self.data = data if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            self.error(None, "must be a mapping")
        self.aliases = aliases or {}
        for key in self.data:
            if not isinstance(key, str) or (key not in known and key not in self.aliases):
                self.error(key, "unknown key" + _did_you_mean(key, known))

    def error(self, key: str | None, message: str) -> None:
        place = self.where + (f": key '{key}'" if key is not None else "")
        self.errors.append(f"{place}: {message}")

    def has(self, key: str) -> bool:
        return self._key(key) in self.data

    def _key(self, key: str) -> str:
        if key not in self.data:
            for alias, target in self.aliases.items():
                if target == key and alias in self.data:
                    return alias
        return key

    def get(self, key: str, check, required: bool = False):
        """Return the checked value of key, None when it is missing or invalid;
        check raises ValueError with a message."""
        actual = self._key(key)
        if actual not in self.data or self.data[actual] is None:
            if required:
                self.error(key, "is required")
            return None
        try:
            return check(self.data[actual])
        except ValueError as e:
            self.error(actual, str(e))
            return None


def _given(**values: Any) -> dict[str, Any]:
    """The values that are not None: the others are left to the dataclass defaults."""
    return {key: value for key, value in values.items() if value is not None}


def _did_you_mean(key: Any, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string")
    value = str(value)
    if not value:
        raise ValueError("must not be empty")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must not be an empty list")
    return tuple(_string(v) for v in items)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _integer(low: int, high: int | None = None):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return check


def _seconds(low: float):
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number of seconds")
        if value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        return float(value)

    return check


def _one_of(choices: tuple[str, ...]):
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(
                f"must be one of {', '.join(choices)}, got {value!r}" + _did_you_mean(value, choices)
            )
        return value

    return check


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of IP addresses or CIDR ranges")
    result = []
    for item in value:
        try:
            result.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return tuple(result)


def _header_names(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError("must be a list of header names")
    return frozenset(_string(v).lower() for v in value)


def _standard_webhooks_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret (``whsec_`` and base64, or the
    bare base64); empty when it is not base64."""
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _standard_webhooks_secret(value: Any) -> str:
    secret = _string(value)
    if not secret.startswith("whsec_") or not _standard_webhooks_key(secret):
        raise ValueError("must be a Standard Webhooks secret: 'whsec_' and the base64 of the key")
    return secret


def _forwarded_header_names(value: Any) -> frozenset[str]:
    names = _header_names(value)
    refused = sorted(n for n in names if never_passed_on(n))
    if refused:
        raise ValueError(f"{refused[0]!r} is never passed on to a target (see FORWARDING.md); remove it")
    return names


def _template(allowed: str):
    def check(value: Any) -> Template:
        try:
            template = compile_template(_string(value))
        except TemplateError as e:
            raise ValueError(f"invalid template: {e}") from None
        unknown = template.variables - {allowed}
        if unknown:
            raise ValueError(f"unknown variable {sorted(unknown)[0]!r}; only {allowed!r} is available")
        return template

    return check


def _url(value: Any) -> str:
    url = _string(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {url!r}") from None
    return url


SERVER_KEYS = (
    "default-body-limit",
    "trusted-proxies",
    "ignored-headers",
    "admin-token",
    "metrics",
    "retention-hours",
    "history-max",
    "metrics-token",
    "max-waiters-per-token",
    "lease-seconds",
)
CHANNEL_KEYS = (
    "name",
    "api-read-token",
    "webhook-secret",
    "secret-header",
    "secret-type",
    "secret-extract-template",
    "secret-sign-template",
    "provider",
    "verify-token",
    "dedup-window-seconds",
    "max-queue",
    "max-body-size",
    "allowed-ips",
    "note",
    "monitoring-metrics",
    "forward",
    "consumers",
    "retention-hours",
    "history-max",
)
CONSUMER_KEYS = ("name", "token", "forward", "filter", "max-queue")
FORWARD_KEYS = (
    "url",
    "interval-seconds",
    "expected-status",
    "timeout-seconds",
    "max-attempts",
    "max-delay-seconds",
    "concurrency",
    "sign-header",
    "sign-secret",
    "sign-scheme",
    "sign-template",
    "headers",
)


def _parse_server(errors: list[str], where: str, data: Any) -> Server:
    r = _Reader(errors, where, data if data is not None else {}, SERVER_KEYS)
    return Server(
        **_given(
            default_body_limit=r.get("default-body-limit", _integer(1, MAX_BODY_LIMIT)),
            trusted_proxies=r.get("trusted-proxies", _networks),
            ignored_headers=r.get("ignored-headers", _header_names),
            admin_token=r.get("admin-token", _string),
            metrics=r.get("metrics", _boolean),
            retention_hours=r.get("retention-hours", _hours),
            history_max=r.get("history-max", _integer(1)),
            metrics_token=r.get("metrics-token", _string),
            max_waiters_per_token=r.get("max-waiters-per-token", _integer(1)),
            lease_seconds=r.get("lease-seconds", _seconds(1)),
        )
    )


def _parse_forward(errors: list[str], where: str, data: Any) -> Forward | None:
    r = _Reader(errors, where, data, FORWARD_KEYS)
    url = r.get("url", _url, required=True)
    scheme = r.get("sign-scheme", _one_of(SIGN_SCHEMES)) or "hmac"
    standard = scheme == "standard-webhooks"
    sign_header = r.get("sign-header", _string)
    sign_secret = r.get("sign-secret", _standard_webhooks_secret if standard else _string)
    if standard:
        for key in ("sign-header", "sign-template"):
            if r.has(key):
                r.error(key, "is not used with sign-scheme 'standard-webhooks' (kwp sets webhook-signature)")
    if r.data.get("sign-secret") is None and (standard or sign_header):
        needs = "sign-scheme 'standard-webhooks'" if standard else "sign-header"
        r.error("sign-secret", f"is required with {needs} (the webhook-secret never signs what kwp forwards)")
    forward = Forward(
        url=url or "",
        **_given(
            interval_seconds=r.get("interval-seconds", _seconds(0.001)),
            expected_status=r.get("expected-status", _integer(100, 599)),
            timeout_seconds=r.get("timeout-seconds", _seconds(0.001)),
            max_attempts=r.get("max-attempts", _integer(1)),
            max_delay_seconds=r.get("max-delay-seconds", _seconds(0.001)),
            concurrency=r.get("concurrency", _integer(1, 64)),
            sign_header=sign_header,
            sign_secret=sign_secret,
            sign_scheme=scheme,
            sign_template=r.get("sign-template", _template("signature")),
            headers=r.get("headers", _forwarded_header_names),
        ),
    )
    return forward if url is not None else None


def _hours(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("must be a number of hours, 0 or more")
    return float(value)


def _filter(value: Any) -> Filter:
    return compile_filter(_string(value))


def _parse_consumer(errors: list[str], where: str, data: Any, channel_max_queue: int | None) -> Consumer | None:
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str):
        where = f"{where} ({name})"
    r = _Reader(errors, where, data, CONSUMER_KEYS)
    name = r.get("name", _string, required=True)
    if name is not None and not CONSUMER_NAME.match(name):
        r.error("name", f"{name!r} must match [A-Za-z0-9_.-]{{1,64}}")
    token = r.get("token", _string)
    forward = _parse_forward(errors, f"{where}: forward", data["forward"]) if r.has("forward") else None
    if token is not None and r.has("forward"):
        r.error("token", "a push consumer (forward) is not pulled: give either token or forward")
    max_queue = r.get("max-queue", _integer(1))
    consumer = Consumer(
        name=name or "",
        token=token,
        forward=forward,
        filter=r.get("filter", _filter),
        max_queue=max_queue if max_queue is not None else channel_max_queue,
    )
    return consumer if name else None


def _parse_consumers(errors: list[str], where: str, data: Any, channel_max_queue: int | None) -> tuple[Consumer, ...]:
    if not isinstance(data, list) or not data:
        errors.append(f"{where}: key 'consumers': must be a non-empty list of consumers")
        return ()
    consumers = []
    for index, item in enumerate(data):
        consumer = _parse_consumer(errors, f"{where}: consumers[{index}]", item, channel_max_queue)
        if consumer is None:
            continue
        if any(c.name == consumer.name for c in consumers):
            errors.append(f"{where}: consumers[{index}] ({consumer.name}): key 'name': duplicate consumer name")
        consumers.append(consumer)
    return tuple(consumers)


def _parse_channel(errors: list[str], where: str, data: Any) -> Channel | None:
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str):
        where = f"{where} ({name})"
    r = _Reader(errors, where, data, CHANNEL_KEYS, aliases={"token": "api-read-token"})
    if "token" in r.data and "api-read-token" in r.data:
        r.error("token", "is an alias of 'api-read-token'; give only one of them")
    name = r.get("name", _string, required=True)
    if name is not None and not CHANNEL_NAME.match(name):
        r.error("name", f"{name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    token = r.get("api-read-token", _string, required=True)
    secret_type = r.get("secret-type", _one_of(SECRET_TYPES))
    max_queue = r.get("max-queue", _integer(1))
    consumers = _parse_consumers(errors, where, data["consumers"], max_queue) if r.has("consumers") else ()
    if consumers and r.has("forward"):
        r.error("forward", "a channel with consumers forwards through them: move forward into a consumer")
    channel = Channel(
        name=name or "",
        token=token or "",
        **_given(
            secrets=r.get("webhook-secret", _strings),
            secret_header=r.get("secret-header", _string),
            secret_type=secret_type,
            extract_template=r.get("secret-extract-template", _template("raw")),
            sign_template=r.get("secret-sign-template", _template("signature")),
            provider=r.get("provider", _one_of(PROVIDERS)),
            verify_token=r.get("verify-token", _string),
            dedup_window_seconds=r.get("dedup-window-seconds", _integer(0)),
            max_queue=max_queue,
            max_body_size=r.get("max-body-size", _integer(1, MAX_BODY_LIMIT)),
            allowed_ips=r.get("allowed-ips", _networks),
            note=r.get("note", lambda v: str(v)),
            monitoring_metrics=r.get("monitoring-metrics", _boolean),
            forward=_parse_forward(errors, f"{where}: forward", data["forward"])
            if r.has("forward") and not consumers
            else None,
            consumers=consumers,
            retention_hours=r.get("retention-hours", _hours),
            history_max=r.get("history-max", _integer(1)),
        ),
    )
    _check_verification(r, channel)
    return channel if name and token else None


def _check_verification(r: _Reader, channel: Channel) -> None:
    """Refuse combinations that would verify less than they seem to."""
    if channel.provider is not None:
        if not channel.secrets:
            r.error("webhook-secret", f"is required with provider {channel.provider!r}")
        for key in ("secret-type", "secret-extract-template", "secret-sign-template"):
            if r.has(key):
                r.error(key, f"is decided by provider {channel.provider!r}; remove it")
        if channel.provider == "meta" and not channel.verify_token:
            r.error("verify-token", "is required with provider 'meta' (the subscription handshake)")
    if channel.verify_token and channel.provider != "meta":
        r.error("verify-token", "is only used with provider 'meta'")
    if channel.provider == "telegram" or (
        channel.provider is None and (channel.secret_header or "").lower() == TELEGRAM_HEADER
    ):
        for index, secret in enumerate(channel.secrets):
            if not TELEGRAM_SECRET.match(secret):
                which = f"secret {index + 1}" if len(channel.secrets) > 1 else "the secret"
                r.error("webhook-secret", f"{which} is not a Telegram secret token: 1 to 256 of A-Z a-z 0-9 _ -")
    if channel.provider == "standard-webhooks":
        for index, secret in enumerate(channel.secrets):
            if not _standard_webhooks_key(secret):
                which = f"secret {index + 1}" if len(channel.secrets) > 1 else "the secret"
                r.error("webhook-secret", f"{which} is not a Standard Webhooks secret: 'whsec_' and base64")
    if channel.provider is not None:
        return
    if channel.secrets and not channel.secret_header:
        r.error("secret-header", "is required when webhook-secret is set (otherwise nothing is verified)")
    if channel.secret_header and not channel.secrets:
        r.error("webhook-secret", "is required when secret-header is set")
    if channel.secret_type != "hmac-sha256":
        for key in ("secret-extract-template", "secret-sign-template"):
            if r.has(key):
                r.error(key, "is only used with secret-type 'hmac-sha256'")
    elif not channel.secret_header and not channel.secrets:
        r.error("secret-type", "'hmac-sha256' needs secret-header and webhook-secret")


def parse_config(data: Any, path: str = "config.yml") -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    top = _Reader(errors, path, data, ("server", "channels"))
    server = _parse_server(errors, f"{path}: server", top.data.get("server"))
    raw_channels = top.data.get("channels")
    if not isinstance(raw_channels, list):
        top.error("channels", "is required and must be a list of channels")
        raw_channels = []
    channels = []
    for index, item in enumerate(raw_channels):
        channel = _parse_channel(errors, f"{path}: channels[{index}]", item)
        if channel is not None:
            channels.append(channel)
    seen_names: set[str] = set()
    owners: dict[str, str] = {}
    for channel in channels:
        where = f"{path}: channel '{channel.name}'"
        if channel.name in seen_names:
            errors.append(f"{where}: key 'name': duplicate channel name")
        seen_names.add(channel.name)
        tokens = [("key 'api-read-token'", channel.token, f"channel '{channel.name}'")]
        tokens += [
            (f"consumer '{c.name}': key 'token'", c.token, f"consumer '{c.name}' of channel '{channel.name}'")
            for c in channel.consumers
            if c.token is not None
        ]
        for place, token, owner in tokens:
            if token in owners:
                errors.append(f"{where}: {place}: the same token is used by {owners[token]}")
            elif token == server.admin_token:
                errors.append(f"{where}: {place}: the same token is used as server.admin-token")
            elif token == server.metrics_token:
                errors.append(f"{where}: {place}: the same token is used as server.metrics-token")
            owners.setdefault(token, owner)
    if server.metrics_token is not None and server.metrics_token == server.admin_token:
        errors.append(f"{path}: server: key 'metrics-token': the same token is used as admin-token")
    if errors:
        raise ConfigError(errors)
    return Config(server=server, channels=tuple(channels), path=path)


def load_config(path: str) -> Config:
    """Read and validate the YAML file at path."""
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the file: {e.strerror or e}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{path}: invalid YAML{at}: {problem}"]) from None
    except RecursionError:
        # PyYAML builds nested collections recursively.
        raise ConfigError([f"{path}: invalid YAML: nested too deeply"]) from None
    return parse_config(data, path)


PLACEHOLDER = "change-me"


def unsafe_settings(config: Config) -> list[str]:
    """What is valid but unsafe to serve: every token or secret that is
    still a change-me placeholder (as in the example config.yml), and every
    channel that verifies no secret."""
    found = []

    def placeholder(where: str, key: str, *values: str | None) -> None:
        if any(value and PLACEHOLDER in value.lower() for value in values):
            found.append(f"{where}: key '{key}' is still a '{PLACEHOLDER}' placeholder: set a secret of your own")

    placeholder(f"{config.path}: server", "admin-token", config.server.admin_token)
    for channel in config.channels:
        where = f"{config.path}: channel '{channel.name}'"
        placeholder(where, "api-read-token", channel.token)
        placeholder(where, "webhook-secret", *channel.secrets)
        placeholder(where, "verify-token", channel.verify_token)
        if channel.forward is not None:
            placeholder(f"{where}: forward", "sign-secret", channel.forward.sign_secret)
        if not channel.secrets:
            who = "any client in its allowed-ips" if channel.allowed_ips else "anyone who can reach kwp"
            found.append(f"{where}: no webhook-secret, nothing is verified: {who} can post to it")
    return found


REDACTED = "<redacted>"


def _redacted_url(url: str) -> str:
    """The URL without its user info and with every query value replaced:
    both are where credentials of a forward target usually sit."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.netloc != netloc:
        netloc = f"{REDACTED}@{netloc}"
    query = "&".join(
        f"{item.partition('=')[0]}={REDACTED}" if item else item for item in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# The config.yml keys that are not their field's name in kebab-case.
_CHANNEL_KEYS = {
    "token": "api-read-token",
    "secrets": "webhook-secret",
    "extract_template": "secret-extract-template",
    "sign_template": "secret-sign-template",
}
# What a provider decides: config.yml refuses these keys beside one.
_DECIDED_BY_PROVIDER = ("secret-type", "secret-extract-template", "secret-sign-template")


def _is_secret(key: str) -> bool:
    """Whether the values of key are credentials: api-read-token, webhook-secret,
    admin-token, verify-token, sign-secret, a consumer's token and whatever
    else ends so."""
    return key == "token" or key.endswith(("-token", "-secret"))


def _plain(key: str, value: Any) -> Any:
    if isinstance(value, (Template, Filter)):
        return value.source
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, (tuple, list, frozenset)):
        return [_plain(key, v) for v in (sorted(value) if isinstance(value, frozenset) else value)]
    if hasattr(value, "__dataclass_fields__"):
        return _section(value)
    if isinstance(value, str) and _is_secret(key):
        return REDACTED
    return value


def _section(obj: Any) -> dict:
    renames = _CHANNEL_KEYS if isinstance(obj, Channel) else {}
    data = {renames.get(f.name, f.name.replace("_", "-")): getattr(obj, f.name) for f in fields(obj)}
    if isinstance(obj, Channel) and obj.provider is not None:
        for key in _DECIDED_BY_PROVIDER:
            del data[key]
    if isinstance(obj, Channel) and not obj.named_consumers:
        del data["consumers"]
    if isinstance(obj, Consumer):
        del data["implicit"]
    if isinstance(obj, Forward):
        data["url"] = _redacted_url(obj.url)
    return {key: _plain(key, value) for key, value in data.items()}


def redacted(config: Config) -> dict:
    """The effective configuration as plain data under config.yml's keys, with
    the defaults filled in, every token and secret replaced, and forward URLs
    without their credentials.  A provider channel shows its provider and not
    the keys the provider decides."""
    return {"server": _section(config.server), "channels": [_section(c) for c in config.channels]}
