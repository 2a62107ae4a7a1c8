"""The HTTP routes (DESIGN §5): thin handlers over ``IntentEngine``.

Handlers validate (pydantic), admit (bounded, 503 when full), run under the request timeout (504)
and race the client's disconnect (whose generation is then aborted in vLLM), then serialise with
orjson. Errors are raised as ``ServiceError`` and rendered by the app's handlers.
"""

from __future__ import annotations

import asyncio
import hmac
import html
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from service import metrics
from service.engine import IntentEngine, ServedModel
from service.errors import ServiceError
from service.modelcard import MODEL_NAME
from service.protocol import (
    AddModelRequest,
    EasRequest,
    EasResponse,
    ErrorBody,
    IntentPrediction,
    IntentsRequest,
)

WEB_DIR = Path(__file__).parent / "web"
T = TypeVar("T")


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library on our replies)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def require_token(request: Request) -> None:
    """Auth (DESIGN §5): ``Authorization: <token>`` as EAS clients send it, or ``Bearer <token>``."""
    expected: bytes | None = request.app.state.token
    if expected is None:
        return
    given = request.headers.get("authorization", "")
    if given[:7].lower() == "bearer ":
        given = given[7:]
    if not hmac.compare_digest(given.strip().encode(), expected):
        raise ServiceError(401, "unauthorized", "missing or wrong token in the Authorization header")


def ready_engine(request: Request) -> IntentEngine:
    """The engine, or 503 (retryable) while it loads, after it died, or while the server drains."""
    state = request.app.state
    if state.draining:
        raise ServiceError(503, "shutting_down", "the server is shutting down", retry_after=5)
    if state.engine is None:
        raise ServiceError(503, "not_ready", "the model is still loading", retry_after=5)
    return state.engine


async def until_disconnect(request: Request, work: Awaitable[T], timeout_s: float) -> T:
    """Await ``work`` under the timeout, cancelling it (and so its generation) if the client leaves.

    The body is already read, so the only message left on ``receive`` is the disconnect; this is
    the pattern of Starlette's StreamingResponse and vLLM's own ``with_cancellation``.
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    if watcher in done:
        raise ServiceError(499, "client_closed", "the client closed the connection")
    raise ServiceError(504, "timeout", f"the request took longer than {timeout_s:g} s")


def model_named(request: Request, body: EasRequest | IntentsRequest) -> str | None:
    """The model a request names: its path's (``/models/{model_name}/...``, for clients that cannot add a field, as
    an EAS client posting to one URL per model), else its body's ``model``; None: the default."""
    return request.path_params.get("model_name") or body.model


def require_admin(request: Request) -> None:
    """The admin routes change what the server serves from paths on its disk: they need the token to be set."""
    if request.app.state.token is None:
        raise ServiceError(403, "admin_disabled", "the admin routes need a token: start the server with --api-token")
    require_token(request)


_errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 503, 504)}
api = APIRouter(dependencies=[Depends(require_token)], responses=_errors)
admin = APIRouter(
    dependencies=[Depends(require_admin)],
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}} | _errors,
    tags=["admin"],
)
ops = APIRouter()


_STREAM = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": "With use_stream_chat: EasResponse objects as JSON, each followed by a NUL byte.",
    }
}


@api.post(
    "/",
    response_model=EasResponse,
    responses={200: {"content": {"application/octet-stream": _STREAM}}},
    summary="EAS-compatible chat (streams with use_stream_chat)",
)
async def eas(body: EasRequest, request: Request, engine: IntentEngine = Depends(ready_engine)) -> Response:
    model, ids, params = engine.prepare_chat(body, model_named(request, body))
    timeout_s = request.app.state.settings.request_timeout
    if body.use_stream_chat:
        engine.admission.check(1)
        return StreamingResponse(
            _eas_stream(engine, body, model, ids, params, timeout_s), media_type="application/octet-stream"
        )

    async def run() -> str:
        last = ""
        async for update in engine.stream(model, ids, params):
            last = update.decoded.text
        return last

    with engine.admission.slots(1):
        text = await until_disconnect(request, run(), timeout_s)
    return OrjsonResponse(_eas_reply(body, text))


async def _eas_stream(
    engine: IntentEngine, body: EasRequest, model: ServedModel, ids: list[int], params: Any, timeout_s: float
) -> AsyncIterator[bytes]:
    """NUL-terminated JSON objects, each with the full text so far (what EAS clients split on)."""
    with engine.admission.hold(1):
        try:
            async with asyncio.timeout(timeout_s):
                async for update in engine.stream(model, ids, params):
                    yield orjson.dumps(_eas_reply(body, update.decoded.text)) + b"\0"
        except TimeoutError:
            return  # headers are sent; the stream ends early and the generation is aborted


def _eas_reply(body: EasRequest, text: str) -> dict[str, Any]:
    return {"response": text, "history": [*map(list, body.history), [body.prompt, text]]}


@api.post(
    "/v1/intents",
    response_model=IntentPrediction | list[IntentPrediction],
    summary="Intents of one utterance (text) or a batch (texts)",
)
async def intents(body: IntentsRequest, request: Request, engine: IntentEngine = Depends(ready_engine)) -> Response:
    texts = body.utterances()
    if texts is None:
        raise ServiceError(422, "invalid_request", "give exactly one of 'text' or 'texts'", field="text")
    kwargs = {
        "history": body.history,
        "system_prompt": body.system_prompt,
        "constrained": body.constrained,
        "model": model_named(request, body),
    }
    timeout_s = request.app.state.settings.request_timeout
    with engine.admission.slots(len(texts)):
        if body.text is not None:
            one = await until_disconnect(request, engine.predict(body.text, **kwargs), timeout_s)
            return OrjsonResponse(one.model_dump())
        many = await until_disconnect(request, engine.predict_many(texts, **kwargs), timeout_s)
    return OrjsonResponse([p.model_dump() for p in many])


@ops.get("/health/live", summary="The process is up")
async def live() -> Response:
    return OrjsonResponse({"status": "live"})


@ops.get("/health/ready", summary="The engine is loaded and answering (503 otherwise)")
async def ready(request: Request) -> Response:
    engine = ready_engine(request)
    try:
        await engine.check_health()
    except Exception as exc:
        raise ServiceError(503, "engine_dead", f"the engine is not answering: {exc}", retry_after=5) from exc
    return OrjsonResponse({"status": "ready", "model": engine.default, "models": list(engine.models)})


@admin.post("/v1/admin/models", status_code=201, summary="Serve one more adapter of the server's base")
async def add_model(body: AddModelRequest, engine: IntentEngine = Depends(ready_engine)) -> Response:
    """Loads the adapter directory at ``path`` under ``name``, warms it up, then lets requests name it; the other
    models keep answering. Needs a server started with adapter directories (vLLM's LoRA on) and a token."""
    model = await engine.add_model(body.name, Path(body.path))
    return OrjsonResponse({"id": model.name, "root": str(model.model_dir), "intentlm": model.metadata}, 201)


@admin.delete("/v1/admin/models/{name}", summary="Stop serving an adapter (not the default model)")
async def remove_model(
    name: Annotated[str, PathParam(pattern=MODEL_NAME.pattern)], engine: IntentEngine = Depends(ready_engine)
) -> Response:
    await engine.remove_model(name)
    return OrjsonResponse({"id": name, "deleted": True})


@ops.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus() -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)


# Pages. Their URLs are all relative (assets, API calls, openapi.json), so they work unchanged behind a gateway
# that serves the app under a path prefix it strips (EAS, ingress controllers), and they load nothing from a CDN.
UI_PAGE = (WEB_DIR / "index.html").read_text()


@ops.get("/ui", include_in_schema=False)
async def ui(request: Request) -> Response:
    """The try-it page, told this server's out-of-scope label and models (``<meta>`` tags), so it marks the label the
    server answers, whatever ``INTENTLM_OOS_LABEL`` says, and offers the models it serves (none while the engine
    loads); both are HTML-escaped like any text put into markup."""
    label = html.escape(request.app.state.settings.oos_label)
    engine = request.app.state.engine
    models = html.escape(",".join(engine.models) if engine is not None else "")
    return HTMLResponse(UI_PAGE.replace("{{oos_label}}", label).replace("{{models}}", models))


@ops.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """Swagger UI from the files of the swagger-ui-bundle-v2 package (mounted at /docs/assets), not FastAPI's CDN.
    ``openapi.json`` is relative to this page, so it resolves to /openapi.json, or under the gateway's prefix."""
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url="docs/assets/swagger-ui-bundle.js",
        swagger_css_url="docs/assets/swagger-ui.css",
        swagger_favicon_url="docs/assets/favicon-32x32.png",
    )


@ops.get("/ui/", include_in_schema=False)
@ops.get("/docs/", include_in_schema=False)
async def without_trailing_slash(request: Request) -> Response:
    """``/ui/`` → ``ui`` (and ``/docs/``): the pages' relative URLs resolve against their URL without the slash.
    The Location is relative, so it keeps a prefix the gateway stripped; Starlette's own slash redirect is an
    absolute URL built from the Host header, which would drop it."""
    return RedirectResponse(f"../{request.url.path.strip('/')}")
