"""The vLLM ``AsyncLLM`` wrapper: generation, admission and metrics around the predictor.

Everything that depends only on the model (tokenizer, chat template, system prompt, the intent
regex, sampling templates, the answer's parsing and scores) lives in the ``service.predictor.Predictor``
built once in ``IntentEngine.start``; a request only renders its prompt, tokenizes it and hands the token ids to vLLM, whose continuous batching runs concurrent
requests together (nothing here serialises them). A request cancelled while generating (client
gone, timeout) is aborted in the engine by ``AsyncLLM.generate`` itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import metrics
from service.admission import Admission
from service.config import Settings, lora_request
from service.errors import ServiceError
from service.logs import vllm_request_id
from service.modelcard import ModelCard, read_card
from service.openai_serving import OpenAIServing
from service.predictor import Decoded, Predictor
from service.protocol import MAX_BATCH, EasRequest, IntentCall, IntentPrediction, RankedIntent
from service.typicality import TypicalityScorer, typicality_scorer
from service.uncertain import UncertainLog
from service.vllm_forced import samples_beside_proposals

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("intentlm.engine")


@dataclass(frozen=True)
class Generation:
    """One update of a generation: what was decoded so far and whether it has finished."""

    decoded: Decoded
    finished: bool


class IntentEngine:
    """One served model: its predictor (service.predictor) over the vLLM engine, and the admission bound."""

    def __init__(
        self,
        llm: AsyncLLM,
        settings: Settings,
        model_dir: Path,
        predictor: Predictor,
        openai: OpenAIServing,
        *,
        greedy_only: bool = False,
        uncertain: UncertainLog | None = None,
    ) -> None:
        """``openai``: vLLM's OpenAI serving over ``llm`` (service.openai_serving). ``greedy_only``: the engine cannot
        sample beside jump-forward proposals (``samples_beside_proposals``). ``uncertain``: where uncertain
        ``/v1/intents`` answers are recorded (``--record-uncertain``), None when that is off."""
        from vllm.sampling_params import RequestOutputKind

        self.llm = llm
        self.settings = settings
        self.model_dir = model_dir
        self.predictor = predictor
        self.lora = lora_request(model_dir)  # an adapter directory's, on every generation; None for merged weights
        self.openai = openai
        self.greedy_only = greedy_only
        self.uncertain = uncertain
        self.card = predictor.card
        self.tokenizer: Any = predictor.tokenizer
        self.admission = Admission(settings.max_in_flight, settings.max_queued, settings.admission_deadline)
        self._kinds = RequestOutputKind
        self._known_intents = set(self.card.intents) | {settings.oos_label}
        metrics.MODEL_INFO.info(
            {
                "name": model_dir.name,
                "model_dir": str(model_dir),
                "base_model": self.card.base_model,
                "intents": str(len(self.card.intents)),
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
        args = settings.engine_args(model_dir)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        single_pass = bool(settings.single_pass_typicality(model_dir))
        scorer = None
        if not single_pass:  # a second pass: a model load, off the event loop
            scorer = await asyncio.to_thread(server_typicality, settings, model_dir)
        log.info("typicality: %s", typicality_source(single_pass, scorer))
        predictor = Predictor(
            card,
            llm.get_tokenizer(),
            max_model_len=settings.max_model_len,
            max_new_tokens=settings.intent_max_tokens,
            oos_rule=card.oos_rule(settings.oos_threshold, settings.typicality_threshold),
            oos_label=settings.oos_label,
            typicality=scorer,
        )
        greedy_only = "speculative_config" in args and not samples_beside_proposals()
        metadata = {"intents": card.intents, "out_of_scope_label": settings.oos_label, "max_batch": MAX_BATCH}
        openai = await OpenAIServing.create(llm, model_dir, metadata)
        uncertain = None
        if settings.record_uncertain is not None:
            uncertain = UncertainLog(
                settings.record_uncertain,
                confidence=settings.record_uncertain_confidence,
                max_bytes=settings.record_uncertain_max_bytes,
                model=model_dir.name,
            )
            log.info("recording uncertain /v1/intents requests in %s", settings.record_uncertain)
        engine = cls(llm, settings, model_dir, predictor, openai, greedy_only=greedy_only, uncertain=uncertain)
        await engine.predict("hello", route="warmup")
        return engine

    def shutdown(self) -> None:
        self.llm.shutdown()
        if self.predictor.typicality is not None:
            self.predictor.typicality.shutdown()
        if self.uncertain is not None:
            self.uncertain.close()

    async def check_health(self) -> None:
        """Raises when the engine is dead (its core process exited or errored)."""
        await self.llm.check_health()

    def _room(self, prompt_ids: Sequence[int], wanted: int) -> int:
        return max(1, min(wanted, self.settings.max_new_tokens_cap, self.settings.max_model_len - len(prompt_ids)))

    # -------------------------------------------------------------------------------- generation

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Generation]:
        """Generate, yielding updates (vLLM's own metrics count their tokens and times)."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        async for out in self.llm.generate(prompt, params, vllm_request_id(), lora_request=self.lora):
            yield Generation(decoded=Decoded.from_output(out), finished=out.finished)

    async def _final(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        last = None
        async for last in self.stream(prompt_ids, params):
            pass
        assert last is not None and last.finished
        return last

    def chat_params(self, request: EasRequest, prompt_ids: Sequence[int]) -> SamplingParams:
        """Free-form sampling for ``POST /``; temperature 0 or top_k 1 (the reference client's default) is greedy:
        the most likely token whatever the temperature, so vLLM decodes it as greedy."""
        from vllm import SamplingParams

        greedy = request.temperature == 0 or request.top_k == 1
        if not greedy and self.greedy_only:
            raise ServiceError(
                422,
                "sampling_unavailable",
                "this server decodes greedily only (jump-forward decoding on a CPU whose vLLM cannot sample beside "
                "speculative tokens): send temperature 0 or top_k 1, or start it with --no-jump-forward",
                field="temperature",
            )
        # top_k at or above the vocabulary (or -1) means every token: vLLM's 0. Passing a huge value
        # through would overflow the engine's request serialisation (a 500 found by tests/test_hostile.py).
        all_tokens = request.top_k == -1 or request.top_k >= len(self.tokenizer)
        return SamplingParams(
            temperature=0.0 if greedy else request.temperature,
            top_k=0 if greedy or all_tokens else request.top_k,
            top_p=1.0 if greedy else request.top_p,
            max_tokens=self._room(prompt_ids, request.max_new_tokens),
            stop_token_ids=self.predictor.stop_ids,
            output_kind=self._kinds.CUMULATIVE if request.use_stream_chat else self._kinds.FINAL_ONLY,
        )

    def prepare_chat(self, request: EasRequest) -> tuple[list[int], SamplingParams]:
        """``POST /``: the prompt's token ids and sampling (refusing a prompt that does not fit)."""
        ids = self.predictor.prompt_ids(
            request.prompt, system_prompt=request.system_prompt, history=request.history, field="prompt"
        )
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
            self.predictor.prompt_ids(text, system_prompt=system_prompt, history=history, field=field)
            for text, field in zip(texts, fields)
        ]
        params = [self.predictor.sampling_params(text, history=history, constrained=constrained) for text in texts]
        if len(prompts) == 1:
            return [await self._label(prompts[0], params[0], constrained, route, start, texts[0], history)]
        return list(
            await asyncio.gather(
                *(
                    self._label(ids, p, constrained, route, start, text, history)
                    for ids, p, text in zip(prompts, params, texts)
                )
            )
        )

    async def _label(
        self,
        ids: list[int],
        params: SamplingParams,
        constrained: bool,
        route: str,
        start: float,
        text: str,
        history: Sequence[Sequence[str]],
    ) -> IntentPrediction:
        """Decode one prompt and answer it, with vLLM's typicality or, where a second pass scores it, that pass's,
        which runs beside the generation, not after it. ``text`` and ``history`` are the request, for the
        uncertain-traffic log."""
        if self.predictor.typicality is None:
            generation = await self._final(ids, params)
            typicality = generation.decoded.typicality
        else:
            generation, typicality = await asyncio.gather(
                self._final(ids, params), _typicality_of(self.predictor.typicality, ids)
            )
        answer = self.predictor.answer(generation.decoded, typicality, constrained=constrained)
        if answer.malformed:
            metrics.MALFORMED.labels(route).inc()
        if route != "warmup":
            if answer.rejection is not None:
                metrics.OUT_OF_SCOPE.labels(answer.rejection).inc()
            for call in answer.calls:
                metrics.PREDICTED_INTENTS.labels(self._intent_label(call.name)).inc()
            if answer.ranking:  # the intent the model wrote, also when the out-of-scope rule rejected it
                written = self._intent_label(answer.ranking[0][0])
                metrics.CONFIDENCE.labels(written).observe(answer.confidence)
                if answer.typicality is not None:
                    metrics.TYPICALITY.labels(written).observe(answer.typicality)
            if self.uncertain is not None and constrained:  # only intent answers carry the scores it orders by
                self.uncertain.record(text, history, answer)
        return IntentPrediction(
            intents=[IntentCall(name=c.name, args=list(c.args)) for c in answer.calls],
            raw=answer.raw,
            confidence=round(answer.confidence, 6),
            ranking=[RankedIntent(name=name, confidence=round(p, 6)) for name, p in answer.ranking if p >= 5e-7],
            oos_reason=answer.rejection,
            typicality=None if answer.typicality is None else round(answer.typicality, 6),
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
        )

    def _intent_label(self, name: str) -> str:
        """A bounded metric label: the model's intents and the out-of-scope label, anything else ``other``."""
        return name if name in self._known_intents else "other"


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


def typicality_source(single_pass: bool, scorer: TypicalityScorer | None) -> str:
    """Where the served answers' typicality comes from (logged at start)."""
    if scorer is not None:
        return "a second forward pass (transformers)"
    if single_pass:
        return "vLLM's own forward pass"
    return "none (turned off, or the model has no typicality.npz)"


def server_typicality(settings: Settings, model_dir: Path) -> TypicalityScorer | None:
    """The typicality scorer of a model directory with statistics, unless the operator turned it off.

    Its model copy takes one core (torch's threads) beside the engine, and loads after vLLM's engine has taken its
    share of the GPU; when it does not fit, the server does not start (rather than serve without the out-of-scope
    rule the card was calibrated for) and says what to change."""
    if not settings.typicality:
        return None
    try:
        return typicality_scorer(model_dir, settings.dtype, cpu_threads=1)
    except (RuntimeError, MemoryError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        raise RuntimeError(
            f"typicality: cannot load the second copy of {model_dir} for its scoring pass ({exc}); lower "
            "INTENTLM_GPU_MEMORY_UTILIZATION to leave it room, or set INTENTLM_TYPICALITY=false"
        ) from exc
