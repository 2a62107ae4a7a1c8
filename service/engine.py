"""The vLLM ``AsyncLLM`` wrapper: prompts, sampling, constrained decoding, confidence, admission.

Everything that depends only on the model (tokenizer, chat template, system prompt, the intent
regex, sampling templates) is prepared once in ``IntentEngine.start``; a request only renders its
prompt, tokenizes it and hands the token ids to vLLM, whose continuous batching runs concurrent
requests together (nothing here serialises them). A request cancelled while generating (client
gone, timeout) is aborted in the engine by ``AsyncLLM.generate`` itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import metrics
from service.config import Settings
from service.errors import ServiceError
from service.hardware import choose_dtype
from service.intents import decoding_regex, try_parse
from service.modelcard import ModelCard, read_card
from service.prompt import END_OF_TURN, build_prompt, fold_history
from service.protocol import EasRequest, IntentCall, IntentPrediction
from service.typicality import TypicalityScorer

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("intentlm.engine")


@dataclass(frozen=True)
class Generation:
    """One update of a generation: the full text so far and, when finished, how it ended."""

    text: str
    token_ids: Sequence[int]
    logprobs: Sequence[float]
    prompt_tokens: int
    finished: bool
    finish_reason: str | None
    first_token_s: float | None


class Admission:
    """A bounded count of admitted generations; past the bound a request is refused at once (503).

    vLLM runs up to ``max_in_flight`` sequences per step and queues the rest; bounding the queue
    turns overload into an immediate, retryable answer instead of unbounded latency.
    """

    def __init__(self, max_in_flight: int, max_queued: int) -> None:
        self.max_in_flight = max_in_flight
        self.limit = max_in_flight + max_queued
        self.admitted = 0

    def check(self, n: int) -> None:
        """Refuse (503, retryable) when ``n`` more generations would pass the bound; 422 when they never fit."""
        if n > self.limit:  # retrying could never help: not a 503
            raise ServiceError(
                422,
                "batch_too_large",
                f"{n} texts are more than this server admits at once ({self.limit})",
                field="texts",
            )
        if self.admitted + n > self.limit:
            raise ServiceError(
                503, "overloaded", f"server is at capacity ({self.limit} requests); retry shortly", retry_after=1
            )

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Count ``n`` generations as admitted while the block runs (after ``check``)."""
        self._update(n)
        try:
            yield
        finally:
            self._update(-n)

    @contextmanager
    def slots(self, n: int) -> Iterator[None]:
        self.check(n)
        with self.hold(n):
            yield

    def _update(self, delta: int) -> None:
        self.admitted += delta
        running = min(self.admitted, self.max_in_flight)
        metrics.IN_FLIGHT.set(running)
        metrics.QUEUED.set(self.admitted - running)


class IntentEngine:
    """One served model: its card, tokenizer, prepared sampling parameters and the vLLM engine."""

    def __init__(
        self,
        llm: AsyncLLM,
        settings: Settings,
        model_dir: Path,
        card: ModelCard,
        typicality: TypicalityScorer | None = None,
    ) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        self.llm = llm
        self.settings = settings
        self.model_dir = model_dir
        self.card = card
        self.tokenizer: Any = llm.get_tokenizer()
        self.admission = Admission(settings.max_in_flight, settings.max_queued)
        eot = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self._stop_ids = [eot] if isinstance(eot, int) and eot != self.tokenizer.unk_token_id else []
        # Card without intents: any syntactically valid name (documented in docs/serving.md).
        self._intent_params = SamplingParams(
            temperature=0.0,
            max_tokens=settings.intent_max_tokens,
            logprobs=0,
            stop_token_ids=self._stop_ids,
            structured_outputs=StructuredOutputsParams(regex=decoding_regex(card.intents)),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        self._free_intent_params = self._intent_params.clone()
        self._free_intent_params.structured_outputs = None
        self._kinds = RequestOutputKind
        self._known_intents = set(card.intents) | {settings.oos_label}
        self.oos_rule = card.oos_rule(settings.oos_threshold, settings.typicality_threshold)
        self.typicality = typicality
        metrics.MODEL_INFO.info(
            {
                "name": model_dir.name,
                "model_dir": str(model_dir),
                "base_model": card.base_model,
                "intents": str(len(card.intents)),
                "max_model_len": str(settings.max_model_len),
            }
        )

    @classmethod
    async def start(cls, settings: Settings, model_dir: Path) -> IntentEngine:
        """Load the model into a new vLLM engine and warm it up (grammar compiled, caches primed)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        card = read_card(model_dir)
        if card is None:
            log.warning("%s has no intentlm.json: default system prompt, any intent name", model_dir)
            card = ModelCard()
        args = AsyncEngineArgs(
            model=str(model_dir),
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_in_flight,
            dtype=choose_dtype(settings.dtype).dtype,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=True,  # every request shares the system prompt's prefix
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            generation_config="vllm",  # sampling comes from the request, not generation_config.json
        )
        llm = AsyncLLM.from_engine_args(args)
        scorer = await asyncio.to_thread(typicality_scorer, settings, model_dir)  # a model load: off the event loop
        engine = cls(llm, settings, model_dir, card, scorer)
        await engine.predict("hello", route="warmup")
        return engine

    def shutdown(self) -> None:
        self.llm.shutdown()
        if self.typicality is not None:
            self.typicality.shutdown()

    async def check_health(self) -> None:
        """Raises when the engine is dead (its core process exited or errored)."""
        await self.llm.check_health()

    # ----------------------------------------------------------------------------------- prompts

    def encode(
        self, text: str, *, system_prompt: str | None, history: Sequence[Sequence[str]], field: str
    ) -> list[int]:
        """Render and tokenize a prompt; refuse (422 naming ``field``) one that leaves no room to answer."""
        prompt = build_prompt(
            text,
            system_prompt=self.card.system_prompt if system_prompt is None else system_prompt,
            history=history,
            apply_chat_template=self.card.apply_chat_template,
            tokenizer=self.tokenizer,
        )
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) >= self.settings.max_model_len:
            raise ServiceError(
                422,
                "prompt_too_long",
                f"the prompt is {len(ids)} tokens; this server's context is {self.settings.max_model_len}",
                field=field,
            )
        return ids

    def _room(self, prompt_ids: Sequence[int], wanted: int) -> int:
        return max(1, min(wanted, self.settings.max_new_tokens_cap, self.settings.max_model_len - len(prompt_ids)))

    # -------------------------------------------------------------------------------- generation

    async def stream(self, prompt_ids: list[int], params: SamplingParams, *, route: str) -> AsyncIterator[Generation]:
        """Generate, yielding updates; counts tokens and time to first token for ``route``."""
        from vllm.inputs import TokensPrompt

        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, uuid.uuid4().hex):
            completion = out.outputs[0]
            first_token_s = out.metrics.first_token_latency if out.metrics is not None else None
            update = Generation(
                text=completion.text,
                token_ids=completion.token_ids,
                logprobs=_chosen_logprobs(completion.token_ids, completion.logprobs),
                prompt_tokens=len(prompt_ids),
                finished=out.finished,
                finish_reason=completion.finish_reason,
                first_token_s=first_token_s or None,
            )
            if update.finished:
                metrics.PROMPT_TOKENS.labels(route).inc(update.prompt_tokens)
                metrics.GENERATED_TOKENS.labels(route).inc(len(update.token_ids))
                if update.first_token_s is not None:
                    metrics.TTFT.labels(route).observe(update.first_token_s)
            yield update

    async def _final(self, prompt_ids: list[int], params: SamplingParams, *, route: str) -> Generation:
        last = None
        async for last in self.stream(prompt_ids, params, route=route):
            pass
        assert last is not None and last.finished
        return last

    def chat_params(self, request: EasRequest, prompt_ids: Sequence[int]) -> SamplingParams:
        """Free-form sampling for ``POST /``; temperature 0 is greedy (top_k/top_p then irrelevant)."""
        from vllm import SamplingParams

        # top_k at or above the vocabulary (or -1) means every token: vLLM's 0. Passing a huge value
        # through would overflow the engine's request serialisation (a 500 found by tests/test_hostile.py).
        all_tokens = request.top_k == -1 or request.top_k >= len(self.tokenizer)
        return SamplingParams(
            temperature=request.temperature,
            top_k=0 if request.temperature == 0 or all_tokens else request.top_k,
            top_p=request.top_p if request.temperature > 0 else 1.0,
            max_tokens=self._room(prompt_ids, request.max_new_tokens),
            stop_token_ids=self._stop_ids,
            output_kind=self._kinds.CUMULATIVE if request.use_stream_chat else self._kinds.FINAL_ONLY,
        )

    def prepare_chat(self, request: EasRequest) -> tuple[list[int], SamplingParams]:
        """``POST /``: the prompt's token ids and sampling (refusing a prompt that does not fit)."""
        ids = self.encode(request.prompt, system_prompt=request.system_prompt, history=request.history, field="prompt")
        return ids, self.chat_params(request, ids)

    async def predict(self, text: str, **kwargs: Any) -> IntentPrediction:
        """``POST /v1/intents`` for one utterance (keywords as ``predict_many``)."""
        return (await self.predict_many([text], fields=["text"], **kwargs))[0]

    async def predict_many(
        self,
        texts: Sequence[str],
        *,
        history: Sequence[Sequence[str]] = (),
        system_prompt: str | None = None,
        constrained: bool = True,
        route: str = "/v1/intents",
        fields: Sequence[str] | None = None,
    ) -> list[IntentPrediction]:
        """Label utterances: all prompts are checked first, then submitted at once (vLLM batches them)."""
        start = time.perf_counter()
        fields = fields or [f"texts.{i}" for i in range(len(texts))]
        prompts = [
            self.encode(text, system_prompt=system_prompt, history=history, field=field)
            for text, field in zip(texts, fields)
        ]
        params = [self.intent_params(fold_history(text, history), constrained) for text in texts]
        if len(prompts) == 1:
            return [await self._label(prompts[0], params[0], constrained, route, start)]
        return list(
            await asyncio.gather(*(self._label(ids, p, constrained, route, start) for ids, p in zip(prompts, params)))
        )

    def intent_params(self, text: str, constrained: bool) -> SamplingParams:
        """Sampling for one utterance (``text`` with its history folded in): free, the model's intent
        grammar, or (for a model whose arguments are copied from the text) that grammar with arguments
        limited to the request's word spans, built per request (≈ 5 ms to compile, docs/decisions.md)."""
        if not constrained:
            return self._free_intent_params
        if not self.card.args_from_text:
            return self._intent_params
        from vllm.sampling_params import StructuredOutputsParams

        params = self._intent_params.clone()
        params.structured_outputs = StructuredOutputsParams(regex=decoding_regex(self.card.intents, text))
        return params

    async def _label(
        self, ids: list[int], params: SamplingParams, constrained: bool, route: str, start: float
    ) -> IntentPrediction:
        """Decode one prompt, parse, score, apply the out-of-scope rule.

        The typicality forward pass runs beside the generation, not after it."""
        generation, typicality = await asyncio.gather(
            self._final(ids, params, route=route), _typicality_of(self.typicality, ids)
        )
        raw = generation.text.strip()
        calls = try_parse(raw)
        if calls is None and constrained and generation.finish_reason == "length":
            # Cut off by the token budget mid-call: keep the complete calls before the last ';'.
            calls = try_parse(raw.rpartition(";")[0])
        if calls is None:
            metrics.MALFORMED.labels(route).inc()
            calls = []
        confidence = intent_confidence(
            generation.token_ids, generation.logprobs, self.tokenizer, self.card.confidence_temperature
        )
        intents = [IntentCall(name=c.name, args=list(c.args)) for c in calls]
        rejection = self.oos_rule.rejection(confidence, typicality) if calls else None
        if rejection is not None:
            intents = [IntentCall(name=self.settings.oos_label, args=[])]
        if route != "warmup":
            if rejection is not None:
                metrics.OUT_OF_SCOPE.labels(rejection).inc()
            for call in intents:
                metrics.PREDICTED_INTENTS.labels(call.name if call.name in self._known_intents else "other").inc()
        return IntentPrediction(
            intents=intents,
            raw=raw,
            confidence=round(confidence, 6),
            typicality=None if typicality is None else round(typicality, 6),
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
        )


async def _typicality_of(scorer: TypicalityScorer | None, ids: list[int]) -> float | None:
    """The prompt's typicality; None without a scorer, or when its pass failed: the answer still goes out,
    without the score (the out-of-scope rule then ignores it), and the error is logged."""
    if scorer is None:
        return None
    try:
        return await scorer.score(ids)
    except Exception:
        log.exception("the typicality pass failed; replying without typicality")
        return None


def typicality_scorer(settings: Settings, model_dir: Path) -> TypicalityScorer | None:
    """The typicality scorer of a model directory with statistics, unless the operator turned it off.

    Its model copy loads after vLLM's engine has taken its share of the GPU; when it does not fit, the
    server does not start (rather than serve without the out-of-scope rule the card was calibrated for)
    and says what to change."""
    from service.typicality import HiddenStates, IntentStatistics

    statistics = IntentStatistics.load(model_dir) if settings.typicality else None
    if statistics is None:
        return None
    try:
        states = HiddenStates(model_dir, cpu_threads=1, dtype=settings.dtype)
    except (RuntimeError, MemoryError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        raise RuntimeError(
            f"typicality: cannot load the second copy of {model_dir} for its scoring pass ({exc}); lower "
            "INTENTLM_GPU_MEMORY_UTILIZATION to leave it room, or set INTENTLM_TYPICALITY=false"
        ) from exc
    return TypicalityScorer(states, statistics)


def _chosen_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """The log-probability of each generated token (vLLM returns the sampled token's entry)."""
    if not logprobs:
        return []
    return [step[token].logprob for token, step in zip(token_ids, logprobs)]


def intent_confidence(
    token_ids: Sequence[int], logprobs: Sequence[float], tokenizer: Any, temperature: float = 1.0
) -> float:
    """The probability the model gives to the intent names it wrote, for its least sure call.

    Each call's confidence is the product over the tokens that spell its name (up to its '('): the
    decision "which intent" is what out-of-scope detection needs, while argument tokens (free text
    copied from the utterance) would make long slots look uncertain. The reply's confidence is the
    minimum over its calls, so a two-intent answer is not penalised for being two decisions (a
    product over all names rejected sure multi-intent answers as out of scope). vLLM computes the
    log-probabilities after the grammar mask (checked in vLLM 0.32's model runner: the bitmask is
    applied to the logits the sampler receives), so under constrained decoding this is the model's
    choice among the allowed intents: the maximum-softmax-probability out-of-scope signal.
    ``temperature`` (the card's calibrated one) divides the log-probability, so that the reported
    confidence matches the observed accuracy.
    """
    if not logprobs:
        return 0.0
    calls: list[float] = [0.0]
    in_name = True
    for token, logprob in zip(token_ids, logprobs):
        piece = tokenizer.decode([token])
        if in_name:
            calls[-1] += logprob
        for ch in piece:
            if ch == "(":
                in_name = False
            elif ch == ";":
                in_name = True
                calls.append(0.0)
    return math.exp(min(calls) / temperature)
