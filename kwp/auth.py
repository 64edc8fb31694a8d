"""Bearer-token authorization for the read and management API.

Three kinds of token: the admin token reaches every channel; a channel's
``api-read-token`` reaches its channel and every consumer of it; a
consumer's ``token`` reaches that consumer's queue and the webhooks routed
to it, nothing else.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from kwp.config import Channel, Config, Consumer
from kwp.errors import ApiError, bad_request, channel_not_found, not_found


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Identity:
    """Whose token a request carries: the admin's, a channel's or a consumer's."""

    admin: bool = False
    channel: Channel | None = None
    consumer: Consumer | None = None

    def reaches(self, channel: Channel) -> bool:
        return self.admin or self.channel is channel


def identify(config: Config, authorization: str | None, ui_token: str | None = None) -> Identity:
    """The holder of the Authorization header's token: the admin for the
    config's admin token or ui_token (UI_ACCESS_TOKEN from the environment);
    401 for a missing, malformed or unknown token."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthorized", "missing or malformed 'Authorization: Bearer' header")
    admins = [admin for admin in (config.server.admin_token, ui_token) if admin]
    # A list, not a generator: every admin token is compared, whichever matches.
    is_admin = any([_same(token, admin) for admin in admins])
    # Tokens are compared one by one in constant time, not looked up in a dict,
    # so that timing does not tell how much of a guess was right.
    owner = None
    for channel in config.channels:
        if _same(token, channel.token):
            owner = Identity(channel=channel)
        for consumer in channel.consumers:
            if consumer.token is not None and _same(token, consumer.token):
                owner = Identity(channel=channel, consumer=consumer)
    if is_admin:
        return Identity(admin=True)
    if owner is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return owner


@dataclass(frozen=True)
class Access:
    """What a request's token reaches of one channel: all of it, or (a
    consumer's token) one consumer."""

    channel: Channel
    identity: Identity

    @property
    def consumer(self) -> Consumer | None:
        """The one consumer a consumer's token reaches; None for the admin
        and channel tokens, which reach every consumer."""
        return self.identity.consumer

    def require_channel_token(self) -> None:
        """403 for a consumer's token (signing and test-sending need the
        channel's or the admin token)."""
        if self.consumer is not None:
            raise ApiError(403, "forbidden", "a consumer's token cannot do this; use the channel's token")

    def queue(self, requested: str | None) -> str:
        """The consumer whose queue a per-queue request acts on, by name:
        a consumer token's own; for the channel and admin tokens the one
        ``?consumer=`` names, or the implicit default of a channel without
        consumers.  The name may be one the config no longer has (a removed
        consumer's webhooks stay reachable); ``Channel.consumer`` tells."""
        mine = self.consumer
        if mine is not None:
            if requested is not None and requested != mine.name:
                raise ApiError(403, "forbidden", f"the token does not give access to consumer {requested!r}")
            return mine.name
        if requested is None:
            if self.channel.named_consumers:
                names = ", ".join(c.name for c in self.channel.consumers)
                raise bad_request(f"channel {self.channel.name!r} has consumers ({names}): name one with ?consumer=")
            return self.channel.consumers[0].name
        return requested


def authorize(config: Config, channel_name: str, authorization: str | None, ui_token: str | None = None) -> Access:
    """What the Authorization header reaches of the channel.

    401 for a missing, malformed or unknown token; 404 for an unknown
    channel; 403 for a valid token of another channel.  An admin token
    opens every channel.
    """
    identity = identify(config, authorization, ui_token)
    channel = config.channel(channel_name)
    if channel is None:
        raise channel_not_found(channel_name)
    if not identity.reaches(channel):
        raise ApiError(403, "forbidden", f"the token does not give access to channel {channel_name!r}")
    return Access(channel, identity)


def authorize_admin(config: Config, authorization: str | None, ui_token: str | None = None) -> None:
    """Raise unless the Authorization header carries an admin token: 401
    for a missing, malformed or unknown token, 403 for another token."""
    if not identify(config, authorization, ui_token).admin:
        raise ApiError(403, "forbidden", "only the admin token gives access to this endpoint")


def unknown_consumer(channel: Channel, name: str) -> ApiError:
    return not_found(f"channel {channel.name!r} has no consumer {name!r}")


def authorize_metrics(config: Config, authorization: str | None) -> None:
    """Raise 401 unless the Authorization header carries server.metrics-token
    (when one is set)."""
    expected = config.server.metrics_token
    if expected is None:
        return
    token = bearer_token(authorization)
    if token is None or not _same(token, expected):
        raise ApiError(401, "unauthorized", "/api/metrics needs 'Authorization: Bearer' with server.metrics-token")
