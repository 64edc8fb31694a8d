"""The JSON error body of the contract: {"error": CODE, "message": "..."}."""

from __future__ import annotations

import json


class ApiError(Exception):
    """An answer other than success; the message never holds a secret."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps({"error": self.code, "message": self.message}).encode()

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def channel_not_found(name: str) -> ApiError:
    return ApiError(404, "channel_not_found", f"no channel named {name!r}")
