"""OpenAI-compatible serving (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``) on the served engine.

They are vLLM's own OpenAI serving layer (``vllm.entrypoints.openai``: its protocol models, its serving classes,
its streaming and usage counts) over the same ``AsyncLLM`` that answers ``/v1/intents``, so an OpenAI client gets
exactly what ``vllm serve`` would give it. What is ours is only what vLLM's routers do not know: the token, the
admission bound and deadline, the request timeout, OpenAI's error body for our own refusals, and the opt-in
``intents`` field that decodes under the model's intent grammar (with its card's system prompt when the
conversation has none), so that an OpenAI client gets a parseable intent call. The routes are in
``service.openai_routes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from service.modelcard import weights_dir
from service.predictor import Predictor

if TYPE_CHECKING:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.v1.engine.async_llm import AsyncLLM

OPENAI_ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions")

_INTENTS = Field(
    False,
    description="intentlm: decode under the served model's intent grammar (and, for chat, its system prompt when "
    "the messages have none), so that the answer parses as intent calls. OpenAI SDKs send it with extra_body.",
)


class IntentChatRequest(ChatCompletionRequest):
    """vLLM's chat request with the opt-in ``intents`` field."""

    intents: bool = _INTENTS


class IntentCompletionRequest(CompletionRequest):
    """vLLM's completion request with the opt-in ``intents`` field."""

    intents: bool = _INTENTS


@dataclass(frozen=True)
class OpenAIServing:
    """vLLM's serving objects for one served model, built over the engine that serves ``/v1/intents``."""

    models: OpenAIServingModels
    chat: OpenAIServingChat
    completion: OpenAIServingCompletion
    metadata: dict[str, Any]  # what /v1/models adds to the model's entry under "intentlm"

    @classmethod
    async def create(cls, llm: AsyncLLM, model_dir: Path, metadata: dict[str, Any]) -> OpenAIServing:
        """The serving objects as ``vllm serve`` builds them (vllm.entrypoints.launchers.api_server.app_state), with
        the model's chat template and no request logging (our own logs carry the request id). The model is named by
        its directory; an adapter directory is vLLM's LoRA module of that name over its base."""
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath, LoRAModulePath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.online_renderer import OnlineRenderer

        weights, where = weights_dir(model_dir), str(model_dir.absolute())  # noqa: ASYNC240 (no I/O: a path join)
        if weights == model_dir:
            models = OpenAIServingModels(llm, [BaseModelPath(name=model_dir.name, model_path=str(model_dir))])
        else:
            base = [BaseModelPath(name=weights.name, model_path=str(weights))]
            adapter = [LoRAModulePath(name=model_dir.name, path=where)]
            models = OpenAIServingModels(llm, base, lora_modules=adapter)
        await models.init_static_loras()
        template = {"request_logger": None, "chat_template": None, "chat_template_content_format": "auto"}
        renderer = OnlineRenderer(llm.model_config, llm.renderer, **template)
        chat = OpenAIServingChat(llm, models, "assistant", online_renderer=renderer, **template)
        completion = OpenAIServingCompletion(llm, models, online_renderer=renderer, request_logger=None)
        return cls(models, chat, completion, metadata)


def constrain_chat(request: IntentChatRequest, predictor: Predictor) -> None:
    """Decode a chat request under the intent grammar; the card's system prompt leads a conversation without one."""
    messages = list(request.messages)
    if not any(message.get("role") == "system" for message in messages):
        messages.insert(0, {"role": "system", "content": predictor.card.system_prompt})
    request.messages = messages
    said = " ".join(m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str))
    request.structured_outputs = predictor.sampling_params(said).structured_outputs
    request.response_format = None


def constrain_completion(request: IntentCompletionRequest, predictor: Predictor) -> None:
    """Decode a completion request under the intent grammar (its prompt is the caller's, as written)."""
    prompt = request.prompt if isinstance(request.prompt, str) else ""
    request.structured_outputs = predictor.sampling_params(prompt).structured_outputs
    request.response_format = None
