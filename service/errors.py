"""The one base of the errors intentlm raises on purpose, and the HTTP error the server answers with.

Every such error's message says what is wrong and, where it helps, what to do: the command line prints
it as it is (no traceback), and the server renders a ``ServiceError`` as the DESIGN §5 body. Catching
``IntentlmError`` catches them all; the subclasses keep ``ValueError`` or ``RuntimeError`` beside it
where callers (and Python's conventions) expect one. The client's errors (clients/errors.py) are its
own: ``clients`` imports nothing of the rest of the project.
"""

from __future__ import annotations


class IntentlmError(Exception):
    """Base of every error intentlm raises on purpose (bad data, a missing model, a refused request)."""


class ServiceError(IntentlmError):
    """An error with its HTTP status and the DESIGN §5 body (``code``, ``message``, ``field``)."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
