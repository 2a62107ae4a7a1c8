"""``IntentClient`` and ``AsyncIntentClient``: twins over one request/reply layer, in the httpx style.

Everything but the I/O lives in ``_BaseClient`` (building bodies, reading replies, mapping errors,
deciding retries), so the two classes differ only by ``await``. The base URL may carry a path (an
EAS endpoint is ``http://<host>/api/predict/<service>``): every route is resolved below it.

Retries: only failures where the server provably did not act on the request are retried — it could
not be connected to, or it answered 429/503 (queue full, engine not ready) — so a retry never runs
a request twice and is safe for any use; ``retries=0`` turns them off. A timeout while waiting for
the answer is not retried: the server may still be generating it.

A caller's own httpx client (``http_client=``) is used as configured: every request carries its full
URL and the token as a per-request header, so its base URL, headers, timeout and transport stay
the caller's, and so does closing it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from clients.errors import (
    IntentLMConnectionError,
    IntentLMError,
    IntentLMTimeoutError,
    OverloadedError,
    ResponseError,
    error_from_body,
    error_from_response,
)
from clients.models import (
    BatchIntentRequest,
    ChatReply,
    ChatRequest,
    ErrorBody,
    History,
    IntentRequest,
    Prediction,
)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "INTENTLM_URL"
TOKEN_ENV = "INTENTLM_API_TOKEN"
STREAM_DELIMITER = b"\0"
MAX_BATCH = 64
"""Texts per request that an intentlm server accepts (``service.protocol.MAX_BATCH``, copied: ``clients``
imports nothing of the service). ``predict_batch`` splits longer lists into requests of this size."""
USER_AGENT = "intentlm-client"

_PREDICTIONS = TypeAdapter(list[Prediction])


@dataclass(frozen=True)
class Retries:
    """How often and how long to retry a request the server did not act on.

    The wait doubles from ``backoff`` up to ``max_wait``, with jitter so that many clients turned
    away at once do not come back at once; a server's ``Retry-After`` is honoured (up to
    ``max_wait``) instead.
    """

    total: int = 3
    backoff: float = 0.25
    max_wait: float = 10.0

    def delay(self, attempt: int, error: IntentLMError) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up and raise."""
        if attempt >= self.total or not _retryable(error):
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * 2**attempt, self.max_wait) * random.uniform(0.5, 1.0)


def _retryable(error: IntentLMError) -> bool:
    if isinstance(error, OverloadedError):
        return True
    # Only failures to connect: once the request was sent, the server may be working on it.
    return isinstance(error, IntentLMConnectionError) and isinstance(
        error.__cause__, (httpx.ConnectError, httpx.ConnectTimeout)
    )


def _transport_error(exc: httpx.TransportError) -> IntentLMError:
    """The client error for an httpx failure (raised ``from`` it, which ``_retryable`` reads)."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return IntentLMTimeoutError(f"no answer in time ({type(exc).__name__})", code="client_timeout")
    return IntentLMConnectionError(f"{type(exc).__name__}: {exc}", code="connection_error")


class _NulSplitter:
    """Cuts a byte stream into the NUL-separated JSON objects of an EAS streaming reply."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *parts, self._buffer = self._buffer.split(STREAM_DELIMITER)
        return [part for part in parts if part.strip()]

    def close(self) -> list[bytes]:
        rest, self._buffer = self._buffer, b""
        return [rest] if rest.strip() else []


class _BaseClient:
    """What both twins share: configuration, request bodies, reply parsing, error mapping."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self, base_url: str | None, token: str | None, retries: int | Retries, max_batch: int, model: str | None
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.model = model
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.retries = retries if isinstance(retries, Retries) else Retries(total=retries)
        self.max_batch = max_batch

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Request:
        """A request for ``path`` below the base URL, carrying the token itself: a caller's httpx client is
        used as it is, with nothing of ours set on it."""
        # The raw token, as EAS clients send it; an intentlm server also accepts "Bearer <token>".
        headers = {"Authorization": self.token} if self.token else None
        return self._http.build_request(method, f"{self.base_url}/{path}", json=body, headers=headers)

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[start : start + self.max_batch] for start in range(0, len(texts), self.max_batch)]

    def _predict_body(self, text: str, **fields: Any) -> dict[str, Any]:
        return IntentRequest(text=text, model=self.model, **fields).model_dump(mode="json", exclude_none=True)

    def _batch_body(self, texts: list[str], **fields: Any) -> dict[str, Any]:
        request = BatchIntentRequest(texts=list(texts), model=self.model, **fields)
        return request.model_dump(mode="json", exclude_none=True)

    def _chat_body(self, prompt: str, history: History | None, stream: bool, **fields: Any) -> dict[str, Any]:
        request = ChatRequest(prompt=prompt, history=history or [], use_stream_chat=stream, model=self.model, **fields)
        return request.model_dump(mode="json", exclude_none=True)

    @classmethod
    def _parse_batch(cls, response: httpx.Response, texts: list[str]) -> list[Prediction]:
        """One request's predictions, checked to be one per text: chunks are joined by position."""
        predictions = cls._parse(response, _PREDICTIONS)
        if len(predictions) != len(texts):
            raise ResponseError(
                f"{len(predictions)} predictions for {len(texts)} texts from {response.request.url}",
                status_code=response.status_code,
                code="bad_response",
            )
        return predictions

    @staticmethod
    def _parse(response: httpx.Response, model: type[BaseModel] | TypeAdapter) -> Any:
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_json(response.content)
            return model.model_validate_json(response.content)
        except PydanticValidationError as exc:
            raise ResponseError(
                f"unexpected reply from {response.request.url}: {exc.errors()[0]['msg']} "
                f"at {'.'.join(map(str, exc.errors()[0]['loc'])) or '(root)'}: {response.text[:200]!r}",
                status_code=response.status_code,
                code="bad_response",
            ) from exc

    @staticmethod
    def _stream_item(part: bytes) -> ChatReply:
        """One object of a streaming reply; an error object sent mid-stream is raised."""
        try:
            return ChatReply.model_validate_json(part)
        except PydanticValidationError as exc:
            try:
                body = ErrorBody.model_validate_json(part)
            except PydanticValidationError:
                raise ResponseError(f"unexpected object in the stream: {part[:200]!r}", code="bad_response") from exc
            raise error_from_body(body) from None


class IntentClient(_BaseClient):
    """A blocking client for an intentlm (or EAS-compatible) service.

    >>> with IntentClient("http://127.0.0.1:8000", token="...") as client:
    ...     client.predict("turn the lights off").intents
    [Intent(name='iot_hue_lightoff', args=[])]

    ``base_url`` defaults to ``$INTENTLM_URL`` then ``http://127.0.0.1:8000``; ``token`` to
    ``$INTENTLM_API_TOKEN``. ``timeout`` is in seconds (or an ``httpx.Timeout``); ``retries`` a
    count or a ``Retries``; ``max_batch`` the texts per request of ``predict_batch`` (lower it for a
    server with a lower limit); ``model`` the served model every request names, on a server of several
    (``GET /v1/models``; None: the server's default).

    ``http_client`` is a caller's own ``httpx.Client`` (proxies, TLS, a mock transport, shared
    connections), used as configured: its timeout, headers, base URL and transport are left as they
    are — ``timeout`` then does not apply — and each request only adds its full URL and the token.
    The caller closes it; ``close()`` closes only a client this one made.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = 30.0,
        retries: int | Retries = Retries(),
        max_batch: int = MAX_BATCH,
        model: str | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, retries, max_batch, model)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=timeout)

    def predict(
        self,
        text: str,
        *,
        history: History | None = None,
        system_prompt: str | None = None,
        constrained: bool | None = None,
    ) -> Prediction:
        """The intents of one utterance (``POST /v1/intents``)."""
        body = self._predict_body(text, history=history, system_prompt=system_prompt, constrained=constrained)
        return self._parse(self._post("v1/intents", body), Prediction)

    def predict_batch(
        self,
        texts: list[str],
        *,
        history: History | None = None,
        system_prompt: str | None = None,
        constrained: bool | None = None,
    ) -> list[Prediction]:
        """The intents of several utterances, in their order (the server batches them).

        A list longer than ``max_batch`` goes as several requests, one after another, so that no
        request is refused for its size and one call holds at most one request's place in the
        server's queue; a failed request fails the call.
        """
        predictions: list[Prediction] = []
        for chunk in self._chunks(texts):
            body = self._batch_body(chunk, history=history, system_prompt=system_prompt, constrained=constrained)
            predictions += self._parse_batch(self._post("v1/intents", body), chunk)
        return predictions

    def chat(
        self,
        prompt: str,
        history: History | None = None,
        *,
        system_prompt: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
    ) -> tuple[str, History]:
        """Free-form generation on the EAS-compatible ``POST /``: ``(response, history)``."""
        body = self._chat_body(
            prompt,
            history,
            False,
            system_prompt=system_prompt,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        reply = self._parse(self._post("", body), ChatReply)
        return reply.response, reply.history

    def stream(
        self,
        prompt: str,
        history: History | None = None,
        *,
        system_prompt: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """``chat`` with ``use_stream_chat``: yields the whole text so far each time it grows."""
        body = self._chat_body(
            prompt,
            history,
            True,
            system_prompt=system_prompt,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        splitter = _NulSplitter()
        with self._open("POST", "", body) as response:
            try:
                for chunk in response.iter_bytes():
                    for part in splitter.feed(chunk):
                        yield self._stream_item(part).response
            except httpx.TransportError as exc:
                raise _transport_error(exc) from exc
        for part in splitter.close():
            yield self._stream_item(part).response

    def ready(self) -> bool:
        """Whether the service is ready to answer (``GET /health/ready`` is 200)."""
        try:
            return self._http.send(self._request("GET", "health/ready")).status_code == 200
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc

    def close(self) -> None:
        """Close the connections, unless the httpx client is the caller's."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> IntentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        with self._open("POST", path, body) as response:
            response.read()
            return response

    @contextmanager
    def _open(self, method: str, path: str, body: dict[str, Any]) -> Iterator[httpx.Response]:
        """Send with retries; yield the (unread) 2xx response, raise the typed error otherwise."""
        request = self._request(method, path, body)
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                error = _transport_error(exc)
                error.__cause__ = exc
            else:
                if not response.is_error:
                    break
                response.read()
                error = error_from_response(response)
            delay = self.retries.delay(attempt, error)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1
        try:
            yield response
        finally:
            response.close()


class AsyncIntentClient(_BaseClient):
    """The asyncio twin of ``IntentClient``: the same arguments and methods, awaited; ``stream`` is an
    async iterator. A caller's ``http_client`` (an ``httpx.AsyncClient``) is used as configured and
    left open, as with ``IntentClient``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = 30.0,
        retries: int | Retries = Retries(),
        max_batch: int = MAX_BATCH,
        model: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, retries, max_batch, model)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=timeout)

    async def predict(
        self,
        text: str,
        *,
        history: History | None = None,
        system_prompt: str | None = None,
        constrained: bool | None = None,
    ) -> Prediction:
        """The intents of one utterance (``POST /v1/intents``)."""
        body = self._predict_body(text, history=history, system_prompt=system_prompt, constrained=constrained)
        return self._parse(await self._post("v1/intents", body), Prediction)

    async def predict_batch(
        self,
        texts: list[str],
        *,
        history: History | None = None,
        system_prompt: str | None = None,
        constrained: bool | None = None,
    ) -> list[Prediction]:
        """The intents of several utterances, in their order (the server batches them).

        As ``IntentClient.predict_batch``: requests of at most ``max_batch`` texts, one after another;
        to overlap them, gather several calls.
        """
        predictions: list[Prediction] = []
        for chunk in self._chunks(texts):
            body = self._batch_body(chunk, history=history, system_prompt=system_prompt, constrained=constrained)
            predictions += self._parse_batch(await self._post("v1/intents", body), chunk)
        return predictions

    async def chat(
        self,
        prompt: str,
        history: History | None = None,
        *,
        system_prompt: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
    ) -> tuple[str, History]:
        """Free-form generation on the EAS-compatible ``POST /``: ``(response, history)``."""
        body = self._chat_body(
            prompt,
            history,
            False,
            system_prompt=system_prompt,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        reply = self._parse(await self._post("", body), ChatReply)
        return reply.response, reply.history

    async def stream(
        self,
        prompt: str,
        history: History | None = None,
        *,
        system_prompt: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        """``chat`` with ``use_stream_chat``: yields the whole text so far each time it grows."""
        body = self._chat_body(
            prompt,
            history,
            True,
            system_prompt=system_prompt,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        splitter = _NulSplitter()
        async with self._open("POST", "", body) as response:
            try:
                async for chunk in response.aiter_bytes():
                    for part in splitter.feed(chunk):
                        yield self._stream_item(part).response
            except httpx.TransportError as exc:
                raise _transport_error(exc) from exc
        for part in splitter.close():
            yield self._stream_item(part).response

    async def ready(self) -> bool:
        """Whether the service is ready to answer (``GET /health/ready`` is 200)."""
        try:
            return (await self._http.send(self._request("GET", "health/ready"))).status_code == 200
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc

    async def aclose(self) -> None:
        """Close the connections, unless the httpx client is the caller's."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncIntentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        async with self._open("POST", path, body) as response:
            await response.aread()
            return response

    @asynccontextmanager
    async def _open(self, method: str, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """Send with retries; yield the (unread) 2xx response, raise the typed error otherwise."""
        request = self._request(method, path, body)
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                error = _transport_error(exc)
                error.__cause__ = exc
            else:
                if not response.is_error:
                    break
                await response.aread()
                error = error_from_response(response)
            delay = self.retries.delay(attempt, error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1
        try:
            yield response
        finally:
            await response.aclose()
