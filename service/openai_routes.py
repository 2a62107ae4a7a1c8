"""The OpenAI-compatible routes: thin handlers over vLLM's serving objects (``service.openai_serving``).

Each handler authenticates (the router's token), admits (the same bound and deadline as ``/v1/intents``), clamps
the answer's length to the server's cap (``max_new_tokens_cap``, as ``POST /`` does; vLLM's default is the whole
context left), runs vLLM's handler under the request timeout and the client's disconnect, and renders vLLM's reply. Refusals of our
own (401, 503, 422) are rendered in OpenAI's error body on these paths by the app's error handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from service.engine import IntentEngine
from service.openai_serving import IntentChatRequest, IntentCompletionRequest, constrain_chat, constrain_completion
from service.protocol import OpenAIErrorBody
from service.routes import OrjsonResponse, ready_engine, require_token, until_disconnect

openai_api = APIRouter(
    dependencies=[Depends(require_token)],
    responses={code: {"model": OpenAIErrorBody} for code in (400, 401, 404, 413, 422, 503, 504)},
    tags=["OpenAI-compatible"],
)


@openai_api.get("/v1/models", summary="The served models (OpenAI's model list), with their intents; the default first")
async def list_models(engine: IntentEngine = Depends(ready_engine)) -> Response:
    listing = (await engine.openai.models.show_available_models()).model_dump()
    entries = {entry["id"]: entry for entry in listing["data"]}  # vLLM's, with an adapters' base that is not served
    listing["data"] = [entries[name] | {"intentlm": model.metadata} for name, model in engine.models.items()]
    return OrjsonResponse(listing)


@openai_api.post("/v1/chat/completions", summary="OpenAI chat completion (streams with stream: true)")
async def chat_completions(
    body: IntentChatRequest, request: Request, engine: IntentEngine = Depends(ready_engine)
) -> Response:
    model = engine.served(body.model)
    body.model = model.name  # vLLM's default would be the adapters' base, not the default model
    if body.intents:
        constrain_chat(body, model.predictor)
    cap = request.app.state.settings.max_new_tokens_cap
    if body.max_completion_tokens is not None:
        body.max_completion_tokens = min(body.max_completion_tokens, cap)
    else:  # the field OpenAI deprecated, which clients still send
        body.max_tokens = min(body.model_dump(include={"max_tokens"})["max_tokens"] or cap, cap)
    return await _serve(
        engine, request, body.stream, body.n or 1, lambda: engine.openai.chat.create_chat_completion(body, request)
    )


@openai_api.post("/v1/completions", summary="OpenAI text completion (streams with stream: true)")
async def completions(
    body: IntentCompletionRequest, request: Request, engine: IntentEngine = Depends(ready_engine)
) -> Response:
    model = engine.served(body.model)
    body.model = model.name
    if body.intents:
        constrain_completion(body, model.predictor)
    cap = request.app.state.settings.max_new_tokens_cap
    body.max_tokens = min(body.max_tokens or cap, cap)
    many = isinstance(body.prompt, list) and bool(body.prompt) and not isinstance(body.prompt[0], int)
    return await _serve(
        engine,
        request,
        body.stream,
        (len(body.prompt) if many else 1) * body.n,
        lambda: engine.openai.completion.create_completion(body, request),
    )


async def _serve(
    engine: IntentEngine, request: Request, stream: bool | None, n: int, handle: Callable[[], Awaitable[Any]]
) -> Response:
    """Run vLLM's handler under admission (``n`` generations) and the timeout; a stream holds its slots until it
    ends, and is cut off at the timeout (its headers are sent: the generation is aborted and the stream ends)."""
    timeout_s = request.app.state.settings.request_timeout
    if not stream:
        with engine.admission.slots(n):
            result = await until_disconnect(request, _vllm_errors(handle()), timeout_s)
        if isinstance(result, ErrorResponse):
            return OrjsonResponse(result.model_dump(), status_code=result.error.code)
        return OrjsonResponse(result.model_dump())
    engine.admission.check(n)
    result = await _vllm_errors(handle())
    if isinstance(result, ErrorResponse):
        return OrjsonResponse(result.model_dump(), status_code=result.error.code)
    return StreamingResponse(_held(engine, n, result, timeout_s), media_type="text/event-stream")


async def _vllm_errors(work: Awaitable[Any]) -> Any:
    """vLLM's handler's reply, or its error as ``vllm serve`` renders it: vLLM raises some (an invalid sampling
    parameter, a message without a role) for its own app's exception handlers, which render its errors and Python's
    ValueError, TypeError and OverflowError as 400."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMClientError

    try:
        return await work
    except (
        VLLMClientError,
        ValueError,
        TypeError,
        OverflowError,
    ) as exc:  # not its server errors: a dead engine is 503
        return create_error_response(exc)


async def _held(engine: IntentEngine, n: int, events: AsyncIterator[str], timeout_s: float) -> AsyncIterator[str]:
    with engine.admission.hold(n):
        try:
            async with asyncio.timeout(timeout_s):
                async for event in events:
                    yield event
        except TimeoutError:
            return
