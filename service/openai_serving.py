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

from service.errors import ServiceError
from service.modelcard import is_adapter_dir
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
    """vLLM's serving objects for the served models, built over the engine that serves ``/v1/intents``."""

    models: OpenAIServingModels
    chat: OpenAIServingChat
    completion: OpenAIServingCompletion

    @classmethod
    async def create(cls, llm: AsyncLLM, model_dirs: dict[str, Path]) -> OpenAIServing:
        """The serving objects as ``vllm serve`` builds them (vllm.entrypoints.launchers.api_server.app_state), with
        the model's chat template and no request logging (our own logs carry the request id). Each model goes by its
        name; an adapter directory is vLLM's LoRA module of that name over the engine's base (which vLLM lists too,
        by its directory's name, unless a merged model served takes that place)."""
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath, LoRAModulePath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.online_renderer import OnlineRenderer

        merged = [
            BaseModelPath(name=name, model_path=str(d)) for name, d in model_dirs.items() if not is_adapter_dir(d)
        ]
        base = merged or [BaseModelPath(name=Path(llm.model_config.model).name, model_path=llm.model_config.model)]
        adapters = [
            LoRAModulePath(name=name, path=str(d.absolute())) for name, d in model_dirs.items() if is_adapter_dir(d)
        ]
        models = OpenAIServingModels(llm, base, lora_modules=adapters or None)
        await models.init_static_loras()
        template = {"request_logger": None, "chat_template": None, "chat_template_content_format": "auto"}
        renderer = OnlineRenderer(llm.model_config, llm.renderer, **template)
        chat = OpenAIServingChat(llm, models, "assistant", online_renderer=renderer, **template)
        completion = OpenAIServingCompletion(llm, models, online_renderer=renderer, request_logger=None)
        return cls(models, chat, completion)

    async def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load one more adapter into the engine under ``name`` (vLLM's ``/v1/load_lora_adapter``)."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        where = str(adapter_dir.absolute())  # noqa: ASYNC240 (no I/O: a path join)
        result = await self.models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=where))
        if isinstance(result, ErrorResponse):
            raise ServiceError(422, "invalid_model", f"{adapter_dir}: {result.error.message}", field="path")

    async def remove_adapter(self, name: str) -> None:
        """Stop listing the adapter ``name`` (vLLM's ``/v1/unload_lora_adapter``) and drop it from the engine."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        lora_id = self.models.lora_requests[name].lora_int_id
        await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        await self.models.engine_client.remove_lora(lora_id)


def constrain_chat(request: IntentChatRequest, predictor: Predictor) -> None:
    """Decode a chat request under the intent grammar; the card's system prompt leads a conversation without one."""
    messages = list(request.messages)
    if not any(_part(message, "role") == "system" for message in messages):
        messages.insert(0, {"role": "system", "content": predictor.card.system_prompt})
    request.messages = messages
    said = [_part(m, "content") for m in messages if _part(m, "role") == "user"]
    request.structured_outputs = predictor.sampling_params(
        " ".join(text for text in said if isinstance(text, str))
    ).structured_outputs
    request.response_format = None


def _part(message: Any, name: str) -> Any:
    """A field of a chat message: vLLM's message union holds typed dicts and, for some roles, pydantic models (a
    "developer" message read as one raised AttributeError, a 500 found by schemathesis)."""
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def constrain_completion(request: IntentCompletionRequest, predictor: Predictor) -> None:
    """Decode a completion request under the intent grammar (its prompt is the caller's, as written)."""
    prompt = request.prompt if isinstance(request.prompt, str) else ""
    request.structured_outputs = predictor.sampling_params(prompt).structured_outputs
    request.response_format = None
