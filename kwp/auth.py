"""Bearer-token authorization for the read and management API."""

from __future__ import annotations

import hmac

from kwp.config import Channel, Config
from kwp.errors import ApiError, channel_not_found


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


def _identify(config: Config, authorization: str | None, ui_token: str | None) -> tuple[bool, Channel | None]:
    """Whether the header carries an admin token (the config's, or ui_token
    from the environment), and the channel whose token it carries; 401 for a
    missing, malformed or unknown token."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthorized", "missing or malformed 'Authorization: Bearer' header")
    admins = [admin for admin in (config.server.admin_token, ui_token) if admin]
    # A list, not a generator: every admin token is compared, whichever matches.
    is_admin = any([_same(token, admin) for admin in admins])
    # Tokens are compared one by one in constant time, not looked up in a dict,
    # so that timing does not tell how much of a guess was right.
    owner = next((c for c in config.channels if _same(token, c.token)), None)
    if not is_admin and owner is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return is_admin, owner


def authorize(config: Config, channel_name: str, authorization: str | None, ui_token: str | None = None) -> Channel:
    """The channel that the Authorization header may read or manage.

    401 for a missing, malformed or unknown token; 404 for an unknown channel;
    403 for a valid token of another channel.  An admin token opens every
    channel.
    """
    is_admin, owner = _identify(config, authorization, ui_token)
    channel = config.channel(channel_name)
    if channel is None:
        raise channel_not_found(channel_name)
    if not is_admin and owner is not channel:
        raise ApiError(403, "forbidden", f"the token does not give access to channel {channel_name!r}")
    return channel


def authorize_admin(config: Config, authorization: str | None, ui_token: str | None = None) -> None:
    """Raise unless the Authorization header carries an admin token: 401
    for a missing, malformed or unknown token, 403 for a channel's token."""
    is_admin, _ = _identify(config, authorization, ui_token)
    if not is_admin:
        raise ApiError(403, "forbidden", "only the admin token gives access to this endpoint")


def visible_channels(config: Config, authorization: str | None, ui_token: str | None = None) -> tuple[Channel, ...]:
    """The channels the Authorization header reaches: every one for an admin
    token, its own for a channel's token; 401 for any other."""
    is_admin, owner = _identify(config, authorization, ui_token)
    return config.channels if is_admin else (owner,)
