"""Typed errors for the error body of an intentlm service (DESIGN §5).

Every error carries the same four attributes (``status_code``, ``code``, ``message``, ``field``)
so a caller can log any of them the same way, and a class per thing a caller reacts to
differently: fix the token, fix the request, wait and retry, or give up. The names never shadow
Python's built-ins (``from clients import *`` leaves ``TimeoutError`` the built-in one), and
``IntentLMTimeoutError`` and ``IntentLMConnectionError`` derive from the built-ins they stand for,
so ``except TimeoutError`` catches them whether or not the caller imported ours.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError as PydanticValidationError

from clients.models import ErrorBody


class IntentLMError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str = "error", field: str | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.field = field

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        status = f"{self.status_code} " if self.status_code else ""
        return f"{status}{self.code}: {self.message}{where}"


class AuthError(IntentLMError):
    """401/403: the token is missing or wrong."""


class NotFoundError(IntentLMError):
    """404: no such route, e.g. ``/v1/intents`` on a plain EAS chat service."""


class PayloadTooLargeError(IntentLMError):
    """413: the request body is over the server's limit (split the batch)."""


class ValidationError(IntentLMError):
    """422: a request field is out of range; ``field`` names it (e.g. ``top_p``)."""


class OverloadedError(IntentLMError):
    """429/503: the queue is full or the engine is not ready; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class IntentLMTimeoutError(IntentLMError, TimeoutError):
    """504 from the server, or no answer within the client's timeout (``status_code`` None)."""


class ServerError(IntentLMError):
    """Any other 5xx: a fault in the server."""


class IntentLMConnectionError(IntentLMError, ConnectionError):
    """The server could not be reached (after the configured retries)."""


class ResponseError(IntentLMError):
    """The reply is not what an intentlm/EAS service sends (not JSON, or missing fields)."""


_BY_STATUS: dict[int, type[IntentLMError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: OverloadedError,
    503: OverloadedError,
    504: IntentLMTimeoutError,
}


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the delay form; an HTTP date is not used by intentlm)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> IntentLMError:
    """The typed error for a 4xx/5xx reply, from its JSON error body when it has one."""
    status = response.status_code
    try:
        detail = ErrorBody.model_validate_json(response.content).error
        code, message, field = detail.code, detail.message, detail.field
    except PydanticValidationError:
        # Not our error body (a proxy, a gateway, EAS itself): keep its text, trimmed.
        code, message, field = f"http_{status}", response.text.strip()[:500] or response.reason_phrase, None
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else IntentLMError)
    if cls is OverloadedError:
        return OverloadedError(message, status_code=status, code=code, field=field, retry_after=retry_after(response))
    return cls(message, status_code=status, code=code, field=field)


def error_from_body(body: ErrorBody) -> IntentLMError:
    """An error object sent inside a stream, after the 200 status line was already sent."""
    detail = body.error
    cls = IntentLMTimeoutError if detail.code == "timeout" else ServerError
    return cls(detail.message, code=detail.code, field=detail.field)
