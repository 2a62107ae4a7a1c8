"""The FastAPI application: lifespan (engine load in the background), middleware, error handlers.

The engine loads in a background task so that the process answers ``/health/live`` at once and
``/health/ready`` (503) while the model loads, as orchestrators expect; API routes answer 503 with
``Retry-After`` until it is ready. A failed load stops the server (``app.state.load_error`` tells
the CLI to exit non-zero). So does an engine that dies later: a watchdog notices within a second,
API routes and readiness answer 503 meanwhile, and the process exits non-zero so that the
orchestrator restarts it (vLLM's own server also exits on engine death; a restart reloads cleanly,
an in-process engine restart would not be simpler or faster).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from service import metrics
from service.config import Settings
from service.engine import IntentEngine
from service.errors import ServiceError
from service.logs import REQUEST_ID, RequestIds
from service.openai_routes import openai_api
from service.openai_serving import OPENAI_ROUTES
from service.routes import WEB_DIR, OrjsonResponse, admin, api, ops

log = logging.getLogger("intentlm.app")

ENGINE_CHECK_INTERVAL_S = 1.0

EngineFactory = Callable[[Settings, dict[str, Path]], Awaitable[Any]]


def create_app(
    settings: Settings, model_dirs: dict[str, Path], engine_factory: EngineFactory = IntentEngine.start
) -> FastAPI:
    """The app serving ``model_dirs`` (by name, the default first); ``engine_factory`` is replaceable for routing
    unit tests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                app.state.engine = await engine_factory(settings, model_dirs)
                log.info("ready: serving %s", ", ".join(f"{name} ({d})" for name, d in model_dirs.items()))
            except Exception as exc:  # reported by the CLI, which exits non-zero
                log.exception("the engine failed to start")
                app.state.load_error = exc
                app.state.on_fatal()
                return
            await watch(app.state.engine)

        async def watch(engine: Any) -> None:
            while True:
                await asyncio.sleep(ENGINE_CHECK_INTERVAL_S)
                try:
                    await engine.check_health()
                except Exception as exc:  # reported by the CLI, which exits non-zero
                    log.error("the engine died (%s); stopping so that the server is restarted", exc)
                    app.state.engine_error = exc
                    app.state.on_fatal()
                    return

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            loader.cancel()
            if app.state.engine is not None:
                app.state.engine.shutdown()

    app = FastAPI(
        title="intentlm",
        summary="LLM intent recognition: EAS-compatible API, structured intents, metrics.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,  # service.routes.docs serves Swagger UI from local files instead of a CDN
        redoc_url=None,  # one API page is enough; ReDoc too would load from a CDN
    )
    app.state.settings = settings
    app.state.token = settings.api_token.get_secret_value().encode() if settings.api_token else None
    app.state.engine = None
    app.state.draining = False
    app.state.load_error = None
    app.state.engine_error = None
    app.state.on_fatal = lambda: None

    app.include_router(api)
    app.include_router(api, prefix="/models/{model_name}", include_in_schema=False)  # routes.model_named
    app.include_router(admin)
    app.include_router(openai_api)
    app.include_router(ops)
    app.mount("/ui/assets", StaticFiles(directory=WEB_DIR), name="ui-assets")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestIds)  # outermost: the id exists for every other middleware and handler
    _install_error_handlers(app)
    return app


# OpenAI's error types by status (what its SDKs show; they pick the exception class by the status itself).
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_response(
    path: str, status: int, code: str, message: str, field: str | None = None, retry_after: int | None = None
) -> OrjsonResponse:
    """Our error body (ErrorBody), or on the OpenAI-compatible routes OpenAI's (message, type, param, code)."""
    detail: dict[str, str | None]
    if path in OPENAI_ROUTES:
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        detail = {"message": message, "type": kind, "param": field, "code": code}
    else:
        detail = {"code": code, "message": message}
        if field is not None:
            detail["field"] = field
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if (request_id := REQUEST_ID.get()) is not None:  # the catch-all 500 is sent past the RequestIds middleware
        headers["X-Request-ID"] = request_id
    return OrjsonResponse({"error": detail}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> OrjsonResponse:
        return error_response(request.url.path, exc.status, exc.code, exc.message, exc.field, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        field = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        return error_response(
            request.url.path, 422, "invalid_request", f"{field}: {message}" if field else message, field
        )

    from vllm.exceptions import VLLMClientError

    @app.exception_handler(VLLMClientError)
    async def refused_by_vllm(request: Request, exc: VLLMClientError) -> OrjsonResponse:
        """vLLM's request models raise their own validation errors (not pydantic's) while FastAPI reads a body."""
        field = getattr(exc, "parameter", None)
        return error_response(request.url.path, 400, "invalid_request", str(exc), field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> OrjsonResponse:
        code = {400: "bad_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(request.url.path, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> OrjsonResponse:
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError):
            return error_response(
                request.url.path, 503, "engine_dead", "the engine stopped; the server must be restarted", retry_after=5
            )
        log.exception("unexpected error on %s", request.url.path)
        return error_response(request.url.path, 500, "internal", f"internal error: {type(exc).__name__}")


class BodyLimit:
    """413 for request bodies over ``max_bytes``, by Content-Length or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope["path"])(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    def _too_large(self, path: str) -> OrjsonResponse:
        return error_response(path, 413, "body_too_large", self._message())


class RequestMetrics:
    """Counts every response by route and status and times it (the full body, streams included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = metrics.route_label(scope["path"])
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics.REQUESTS.labels(route, str(status)).inc()
            if route in metrics.TIMED_ROUTES:
                metrics.LATENCY.labels(route).observe(time.perf_counter() - start)
