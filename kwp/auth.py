"""Bearer-token authorization for the read and management API."""

from __future__ import annotations

import hmac

from kwp.config import Channel, Config
from kwp.errors import ApiError


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


def authorize(config: Config, channel_name: str, authorization: str | None) -> Channel:
    """The channel that the Authorization header may read or manage.

    401 for a missing, malformed or unknown token; 404 for an unknown channel;
    403 for a valid token of another channel.  The admin token opens every
    channel.
    """
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthorized", "missing or malformed 'Authorization: Bearer' header")
    admin = config.server.admin_token
    is_admin = admin is not None and _same(token, admin)
    # Tokens are compared one by one in constant time, not looked up in a dict,
    # so that timing does not tell how much of a guess was right.
    owner = next((c for c in config.channels if _same(token, c.token)), None)
    if not is_admin and owner is None:
        raise ApiError(401, "unauthorized", "unknown token")
    channel = config.channel(channel_name)
    if channel is None:
        raise ApiError(404, "channel_not_found", f"no channel named {channel_name!r}")
    if not is_admin and owner is not channel:
        raise ApiError(403, "forbidden", f"the token does not give access to channel {channel_name!r}")
    return channel


def authorize_admin(config: Config, authorization: str | None) -> None:
    """Raise unless the Authorization header carries the admin token: 401
    for a missing, malformed or unknown token, 403 for a channel's token."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthorized", "missing or malformed 'Authorization: Bearer' header")
    admin = config.server.admin_token
    if admin is not None and _same(token, admin):
        return
    if any([_same(token, c.token) for c in config.channels]):
        raise ApiError(403, "forbidden", "only the admin token gives access to this endpoint")
    raise ApiError(401, "unauthorized", "unknown token")
