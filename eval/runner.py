"""Predictions for a dataset: from a model directory (vLLM offline, one batched call) or a running service.

``--model`` answers through the server's predictor (``service.predictor``: the same prompt, grammar,
parsing, scores and out-of-scope rule) and submits the whole file to one ``LLM.generate`` call, so vLLM
batches it continuously: one engine start, no per-row loop. Decoding is greedy and, by default,
constrained to the grammar of the card's intents (the model is served that way); ``constrained=False``
lets it write freely, which is what the reference script does.

``--url`` asks a running service through the project's async client (bounded concurrency, retries on
429/503, typed errors), one utterance per request so each record has its own latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from service.config import EngineSettings, lora_request
from service.errors import IntentlmError, ServiceError
from service.hardware import Dtype
from service.intents import Call, format_calls
from service.modelcard import ModelCard, is_adapter_dir, is_model_dir, read_card
from service.predictor import INTENT_MAX_TOKENS, Decoded, Predictor
from service.scope import DEFAULT_OOS_LABEL, OutOfScopeRule
from service.typicality import typicality_scorer

if TYPE_CHECKING:
    from vllm import LLM

log = logging.getLogger("intentlm.eval")

Api = Literal["intents", "eas"]
BATCH_RETRIES = 100


@dataclass(frozen=True)
class Prediction:
    """One answer. ``text`` is what gets scored; ``raw`` is what the model wrote. ``latency_ms`` is a served
    request's (``--url``); an offline batch has none (its figure is records per second)."""

    text: str
    raw: str
    latency_ms: float | None = None
    confidence: float | None = None
    typicality: float | None = None


class RunnerError(IntentlmError, RuntimeError):
    """The predictions could not be produced (unreachable service, refused token, bad model directory)."""


def model_card(model_dir: str | os.PathLike[str]) -> ModelCard:
    """The card of a model directory, or the defaults (with a warning) for a plain HF directory."""
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir) and not is_adapter_dir(model_dir):
        raise RunnerError(f"{model_dir} is not a model directory (no config.json) nor an adapter directory")
    card = read_card(model_dir)
    if card is None:
        log.warning("%s has no intentlm.json: using the default system prompt and chat template", model_dir)
        card = ModelCard()
    return card


def load_llm(model_dir: str | os.PathLike[str], settings: EngineSettings) -> LLM:
    """vLLM's offline engine with the server's engine arguments (``service.config.EngineSettings``).

    The engine runs in this process (``EngineSettings.engine_args`` sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless
    the caller set it): an offline batch has no frontend to keep responsive, and a separate engine-core process costs
    a second import of torch and vLLM and competes with this one for the cores (BENCHMARKS.md, "Evaluation").
    """
    from vllm import LLM

    return LLM(**settings.engine_args(Path(model_dir)))


def predict_with_model(
    model_dir: str | os.PathLike[str],
    instructions: Sequence[str],
    *,
    constrained: bool = True,
    intents: Sequence[str] | None = None,
    fallback_intents: Sequence[str] = (),
    system_prompt: str | None = None,
    args_from_text: bool | None = None,
    oos_rule: OutOfScopeRule | None = None,
    oos_label: str = DEFAULT_OOS_LABEL,
    progress: bool = True,
    dtype: Dtype = "auto",
) -> list[Prediction]:
    """The answers to ``instructions``, in order, from one batched ``generate`` call, through the server's
    predictor (``service.predictor``): the same prompt, grammar, parsing, scores and out-of-scope rule.

    Constrained decoding allows ``intents``, by default the card's, else ``fallback_intents``
    (with a warning: the evaluator passes the data's). ``system_prompt`` and ``args_from_text``
    (None: the card's) override the card's; so does ``oos_rule`` (None: the card's calibrated
    thresholds). Each answer's typicality is scored when the model has statistics (service.typicality).
    """
    from vllm.inputs import TokensPrompt

    card = model_card(model_dir)
    allowed = list(card.intents if intents is None else intents)
    if constrained and not allowed and fallback_intents:
        log.warning("%s lists no intents; constraining decoding to the %d given ones", model_dir, len(fallback_intents))
        allowed = list(fallback_intents)
    if constrained and not allowed:
        raise RunnerError(
            f"{model_dir}: the model card lists no intents to constrain decoding to; "
            "pass the intents or decode free-form"
        )
    overrides: dict[str, object] = {"intents": allowed}
    if system_prompt is not None:
        overrides["system_prompt"] = system_prompt
    if args_from_text is not None:
        overrides["args_from_text"] = args_from_text
    card = card.model_copy(update=overrides)
    settings = EngineSettings(dtype=dtype)
    llm = load_llm(model_dir, settings)
    predictor = Predictor(
        card,
        llm.get_tokenizer(),
        max_model_len=llm.llm_engine.model_config.max_model_len,
        oos_rule=oos_rule,
        oos_label=oos_label,
        # where vLLM does not score typicality in its own pass, a second pass does
        typicality=None if settings.single_pass_typicality(Path(model_dir)) else typicality_scorer(model_dir, dtype),
    )
    try:
        prompts = [predictor.prompt_ids(text, field=f"instruction {i + 1}") for i, text in enumerate(instructions)]
    except ServiceError as exc:
        raise RunnerError(f"{exc.field}: {exc.message}") from None
    params = [predictor.sampling_params(text, constrained=constrained) for text in instructions]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompts],
        params,
        use_tqdm=progress,
        lora_request=lora_request(Path(model_dir)),
    )
    decoded = [Decoded.from_output(out) for out in outputs]
    typicality = [d.typicality for d in decoded]
    if predictor.typicality is not None:
        typicality = predictor.typicality.score_all(prompts, progress=progress).tolist()
    answers = [predictor.answer(d, t, constrained=constrained) for d, t in zip(decoded, typicality)]
    return [Prediction(text=a.text, raw=a.raw, confidence=a.confidence, typicality=a.typicality) for a in answers]


def predict_with_url(
    url: str,
    instructions: Sequence[str],
    *,
    api: Api = "intents",
    token: str | None = None,
    constrained: bool = True,
    system_prompt: str | None = None,
    max_new_tokens: int = INTENT_MAX_TOKENS,
    concurrency: int = 16,
    timeout: float = 120.0,
    progress: bool = True,
) -> list[Prediction]:
    """Predictions from a running service, in order, at most ``concurrency`` requests at a time.

    ``api="intents"`` scores the service's parsed answer (its ``intents``; the raw text when it found
    none, so a malformed answer counts as one); ``api="eas"`` scores the EAS reply text, greedy.
    """
    return asyncio.run(
        _predict_with_url(
            url,
            instructions,
            api=api,
            token=token,
            constrained=constrained,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            concurrency=concurrency,
            timeout=timeout,
            progress=progress,
        )
    )


async def _predict_with_url(
    url: str,
    instructions: Sequence[str],
    *,
    api: Api,
    token: str | None,
    constrained: bool,
    system_prompt: str | None,
    max_new_tokens: int,
    concurrency: int,
    timeout: float,
    progress: bool,
) -> list[Prediction]:
    from tqdm import tqdm

    from clients import (
        AsyncIntentClient,
        AuthError,
        IntentLMConnectionError,
        IntentLMError,
        NotFoundError,
        OverloadedError,
    )

    limit = asyncio.Semaphore(concurrency)

    async def ask(client: AsyncIntentClient, instruction: str) -> Prediction:
        start = time.perf_counter()
        if api == "eas":
            response, _ = await client.chat(
                instruction, system_prompt=system_prompt, temperature=0.0, top_k=1, max_new_tokens=max_new_tokens
            )
            return Prediction(text=response, raw=response, latency_ms=(time.perf_counter() - start) * 1000)
        reply = await client.predict(
            instruction, system_prompt=system_prompt, constrained=None if constrained else False
        )
        calls = [Call(i.name, tuple(i.args)) for i in reply.intents]
        return Prediction(
            text=format_calls(calls) if calls else reply.raw,
            raw=reply.raw,
            latency_ms=(time.perf_counter() - start) * 1000,
            confidence=reply.confidence,
            typicality=reply.typicality,
        )

    async def one(client: AsyncIntentClient, instruction: str, bar: tqdm) -> Prediction:
        """One record. A batch job: a server past its admission deadline says when to come back (503, Retry-After),
        and a record given up on would be lost, so refusals are waited out far longer than the client's own
        retries would (those stay as they are for failures to connect)."""
        async with limit:
            for attempt in range(BATCH_RETRIES + 1):
                try:
                    prediction = await ask(client, instruction)
                    break
                except OverloadedError as exc:
                    if attempt == BATCH_RETRIES:
                        raise
                    await asyncio.sleep(exc.retry_after or 1.0)
            bar.update()
            return prediction

    async with AsyncIntentClient(url, token=token, timeout=timeout) as client:
        with tqdm(total=len(instructions), desc="eval", unit="rec", disable=not progress) as bar:
            tasks = [asyncio.ensure_future(one(client, text, bar)) for text in instructions]
            try:
                return list(await asyncio.gather(*tasks))
            except AuthError as exc:
                raise RunnerError(f"{url}: {exc} (pass --token or set INTENTLM_API_TOKEN)") from None
            except IntentLMConnectionError as exc:
                raise RunnerError(f"cannot reach {url}: {exc.message} (is `intentlm serve` running there?)") from None
            except NotFoundError as exc:
                route = "POST /" if api == "eas" else "POST /v1/intents"
                raise RunnerError(
                    f"{url}: {exc} ({route} not found: is this an intentlm service? "
                    f"try --api {'intents' if api == 'eas' else 'eas'})"
                ) from None
            except IntentLMError as exc:
                raise RunnerError(f"{url}: {exc}") from None
            finally:
                for task in tasks:
                    task.cancel()
