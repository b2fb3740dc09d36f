"""The one error hierarchy. Services raise these; the HTTP layer renders them in OpenAI's shape."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers  # sent with the error, e.g. ("retry-after", "2")


class InvalidRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class RequestTimedOut(ApiError):
    """The client stopped sending its request's body for longer than the idle timeout (docs/limits.md)."""

    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class TooManyRequests(ApiError):
    """Capacity is short now (a flex request that found no slot in time); later may succeed."""

    status = 429
    type = "rate_limit_error"


class ServiceUnavailable(ApiError):
    """The backend looks down now; later may succeed."""

    status = 503
    type = "server_error"


class Conflict(ApiError):
    """A request that can never succeed as sent; clients must not retry it."""

    status = 409


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="id")
