"""The Python client for an intentlm (or EAS-compatible) service. Depends on httpx and pydantic only.

from clients import IntentClient
with IntentClient("http://127.0.0.1:8000") as client:
    print(client.predict("turn the lights off"))
"""

from clients.client import AsyncIntentClient, IntentClient, Retries
from clients.errors import (
    AuthError,
    IntentLMConnectionError,
    IntentLMError,
    IntentLMTimeoutError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ResponseError,
    ServerError,
    ValidationError,
)
from clients.models import ChatReply, History, Intent, Prediction, RankedIntent

__all__ = [
    "AsyncIntentClient",
    "AuthError",
    "ChatReply",
    "History",
    "Intent",
    "IntentClient",
    "IntentLMConnectionError",
    "IntentLMError",
    "IntentLMTimeoutError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "Prediction",
    "RankedIntent",
    "ResponseError",
    "Retries",
    "ServerError",
    "ValidationError",
]
