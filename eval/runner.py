"""Predictions for a dataset: from a model directory (vLLM offline, one batched call) or a running service.

``--model`` renders every prompt exactly as the server does (``service.prompt.build_prompt`` with the
card's system prompt and the tokenizer's chat template, tokenized without added special tokens) and
submits the whole file to one ``LLM.generate`` call, so vLLM batches it continuously: one engine
start, no per-row loop. Decoding is greedy and, by default, constrained to the grammar of the card's
intents (the model is served that way); ``constrained=False`` lets it write freely, which is what
the reference script does.

``--url`` asks a running service through the project's async client (bounded concurrency, retries on
429/503, typed errors), one utterance per request so each record has its own latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.errors import IntentlmError
from service.hardware import Dtype, choose_dtype
from service.intents import Call, decoding_regex, format_calls
from service.modelcard import ModelCard, is_model_dir, read_card
from service.prompt import END_OF_TURN, build_prompt
from service.scope import DEFAULT_OOS_LABEL, OutOfScopeRule
from service.typicality import HiddenStates, IntentStatistics

if TYPE_CHECKING:
    from vllm import LLM

log = logging.getLogger("intentlm.eval")

MAX_NEW_TOKENS = 64  # the reference script's max_new_tokens, and the server's /v1/intents budget
Api = Literal["intents", "eas"]


@dataclass(frozen=True)
class Prediction:
    """One answer. ``text`` is what gets scored; ``raw`` is what the model wrote."""

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
    if not is_model_dir(model_dir):
        raise RunnerError(f"{model_dir} is not a model directory (no config.json)")
    card = read_card(model_dir)
    if card is None:
        log.warning("%s has no intentlm.json: using the default system prompt and chat template", model_dir)
        card = ModelCard()
    return card


def load_llm(model_dir: str | os.PathLike[str], dtype: Dtype = "auto") -> LLM:
    """vLLM's offline engine with the server's engine settings (same context, dtype rule and eager mode).

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the caller set it):
    an offline batch has no frontend to keep responsive, and a separate engine-core process costs
    a second import of torch and vLLM and competes with this one for the cores (BENCHMARKS.md,
    "Evaluation").
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    return LLM(
        model=str(model_dir),
        max_model_len=2048,
        dtype=choose_dtype(dtype).dtype,
        enforce_eager=True,
        enable_prefix_caching=True,  # every prompt shares the system prompt's prefix
        generation_config="vllm",  # sampling comes from here, not the checkpoint's generation_config.json
        disable_log_stats=False,  # keeps per-request timings on the outputs (latency per record)
        seed=0,
    )


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
    max_new_tokens: int = MAX_NEW_TOKENS,
    llm: LLM | None = None,
    progress: bool = True,
    dtype: Dtype = "auto",
) -> list[Prediction]:
    """Greedy predictions for ``instructions``, in order, from one batched ``generate`` call.

    Constrained decoding allows ``intents``, by default the card's, else ``fallback_intents``
    (with a warning: the evaluator passes the data's), and, when the card says the model copies
    its arguments from the text, only word spans of each instruction as arguments (the server's
    per-request grammar, ``service.intents.decoding_regex``). ``system_prompt`` and
    ``args_from_text`` (None: the card's) override the card's; so does ``oos_rule`` (None: the
    card's calibrated thresholds): an answer it rejects becomes ``oos_label()``, as
    the server answers (``raw`` keeps what the model wrote). Each answer's typicality is scored when
    the model has statistics (service.typicality).
    Pass ``llm`` to reuse a loaded engine (it must hold ``model_dir``).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    card = model_card(model_dir)
    spans = card.args_from_text if args_from_text is None else args_from_text
    rule = card.oos_rule() if oos_rule is None else oos_rule
    allowed = list(card.intents if intents is None else intents)
    if constrained and not allowed and fallback_intents:
        log.warning("%s lists no intents; constraining decoding to the %d given ones", model_dir, len(fallback_intents))
        allowed = list(fallback_intents)
    if constrained and not allowed:
        raise RunnerError(
            f"{model_dir}: the model card lists no intents to constrain decoding to; "
            "pass the intents or decode free-form"
        )
    llm = llm if llm is not None else load_llm(model_dir, dtype)
    tokenizer = llm.get_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    params = [
        SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            logprobs=0,
            stop_token_ids=[end_of_turn]
            if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id
            else [],
            structured_outputs=StructuredOutputsParams(regex=decoding_regex(allowed, instruction if spans else None))
            if constrained
            else None,
        )
        for instruction in instructions
    ]
    prompts = [
        TokensPrompt(
            prompt_token_ids=tokenizer.encode(
                build_prompt(
                    instruction,
                    system_prompt=card.system_prompt if system_prompt is None else system_prompt,
                    apply_chat_template=card.apply_chat_template,
                    tokenizer=tokenizer,
                ),
                add_special_tokens=False,
            )
        )
        for instruction in instructions
    ]
    outputs = llm.generate(prompts, params, use_tqdm=progress)
    predictions = [_from_output(out, tokenizer, card.confidence_temperature) for out in outputs]
    statistics = IntentStatistics.load(model_dir)
    if statistics is not None:
        states = HiddenStates(model_dir, dtype=dtype)([p["prompt_token_ids"] for p in prompts])
        predictions = [replace(p, typicality=float(t)) for p, t in zip(predictions, statistics.typicality(states))]
    return [
        replace(p, text=f"{oos_label}()")
        if p.confidence is not None and rule.rejects(p.confidence, p.typicality)
        else p
        for p in predictions
    ]


def _from_output(out: Any, tokenizer: Any, temperature: float) -> Prediction:
    """Score the raw text as it is, unstripped, as the reference script scores its decode.

    The latency is the time the request spent in the engine (queued to last token) while the whole
    file was batched: a throughput-bound figure, not a serving latency. The confidence is the
    server's (``service.engine.intent_confidence``, with the card's temperature), so both modes agree.
    """
    from service.engine import intent_confidence

    completion = out.outputs[0]
    stats = out.metrics
    latency = (stats.last_token_ts - stats.queued_ts) * 1000 if stats is not None and stats.last_token_ts else None
    logprobs = [step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs or [])]
    confidence = intent_confidence(completion.token_ids, logprobs, tokenizer, temperature) if logprobs else None
    return Prediction(text=completion.text, raw=completion.text, latency_ms=latency, confidence=confidence)


def predict_with_url(
    url: str,
    instructions: Sequence[str],
    *,
    api: Api = "intents",
    token: str | None = None,
    constrained: bool = True,
    system_prompt: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
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
        ConnectionError,
        IntentLMError,
        NotFoundError,
    )

    limit = asyncio.Semaphore(concurrency)

    async def one(client: AsyncIntentClient, instruction: str, bar: tqdm) -> Prediction:
        async with limit:
            start = time.perf_counter()
            if api == "eas":
                response, _ = await client.chat(
                    instruction, system_prompt=system_prompt, temperature=0.0, top_k=1, max_new_tokens=max_new_tokens
                )
                prediction = Prediction(text=response, raw=response, latency_ms=(time.perf_counter() - start) * 1000)
            else:
                reply = await client.predict(
                    instruction, system_prompt=system_prompt, constrained=None if constrained else False
                )
                calls = [Call(i.name, tuple(i.args)) for i in reply.intents]
                prediction = Prediction(
                    text=format_calls(calls) if calls else reply.raw,
                    raw=reply.raw,
                    latency_ms=(time.perf_counter() - start) * 1000,
                    confidence=reply.confidence,
                    typicality=reply.typicality,
                )
            bar.update()
            return prediction

    async with AsyncIntentClient(url, token=token, timeout=timeout) as client:
        with tqdm(total=len(instructions), desc="eval", unit="rec", disable=not progress) as bar:
            tasks = [asyncio.ensure_future(one(client, text, bar)) for text in instructions]
            try:
                return list(await asyncio.gather(*tasks))
            except AuthError as exc:
                raise RunnerError(f"{url}: {exc} (pass --token or set INTENTLM_API_TOKEN)") from None
            except ConnectionError as exc:
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
