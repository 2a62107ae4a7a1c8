"""The vLLM ``AsyncLLM`` wrapper: generation, admission and metrics around the predictor.

Everything that depends only on the model (tokenizer, chat template, system prompt, the intent
grammar, sampling templates, the answer's parsing and scores) lives in the ``service.predictor.Predictor``
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
from service.config import MAX_MODELS, Settings
from service.errors import ServiceError
from service.logs import vllm_request_id
from service.modelcard import ModelCard, read_card
from service.openai_serving import OpenAIServing
from service.predictor import Decoded, Predictor
from service.protocol import MAX_BATCH, EasRequest, IntentCall, IntentPrediction, RankedIntent
from service.typicality import TypicalityScorer, typicality_scorer
from service.uncertain import UncertainLog

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("intentlm.engine")


@dataclass(frozen=True)
class Generation:
    """One update of a generation: what was decoded so far and whether it has finished."""

    decoded: Decoded
    finished: bool


ROUTE = "/v1/intents"  # the route whose answers ``_label`` counts (the warm-up's are counted under "warmup")


@dataclass
class ServedModel:
    """One model of the engine: its name, directory and predictor (service.predictor), and the LoRA request its
    generations carry when it is an adapter directory (None for the merged weights the engine loaded)."""

    name: str
    model_dir: Path
    predictor: Predictor
    lora: LoRARequest | None

    def __post_init__(self) -> None:
        self.known_intents = set(self.card.intents) | {self.oos_label}

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    @property
    def oos_label(self) -> str:
        return self.predictor.oos_label

    @property
    def metadata(self) -> dict[str, Any]:
        """What ``GET /v1/models`` adds to the model's entry under ``intentlm``."""
        return {"intents": self.card.intents, "out_of_scope_label": self.oos_label, "max_batch": MAX_BATCH}

    def intent_label(self, name: str) -> str:
        """A bounded metric label: the model's intents and the out-of-scope label, anything else ``other``."""
        return name if name in self.known_intents else "other"


class IntentEngine:
    """The served models (one, or adapters of one base) over one vLLM engine, and the admission bound they share."""

    def __init__(
        self,
        llm: AsyncLLM,
        settings: Settings,
        models: Sequence[ServedModel],
        openai: OpenAIServing,
        *,
        uncertain: UncertainLog | None = None,
    ) -> None:
        """``models``: the default (for requests that name none) first. ``openai``: vLLM's OpenAI serving over
        ``llm`` (service.openai_serving). ``uncertain``: where uncertain ``/v1/intents`` answers are recorded
        (``--record-uncertain``), None when that is off."""
        from vllm.sampling_params import RequestOutputKind

        self.llm = llm
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.openai = openai
        self.uncertain = uncertain
        self.admission = Admission(settings.max_in_flight, settings.max_queued, settings.admission_deadline)
        self._kinds = RequestOutputKind
        self._lock = asyncio.Lock()  # one model added or removed at a time
        for model in models:
            self._register(model)
        self.default = models[0].name

    def _register(self, model: ServedModel) -> None:
        self.models[model.name] = model
        metrics.MODEL_INFO.labels(model.name).info(
            {
                "model_dir": str(model.model_dir),
                "base_model": model.card.base_model,
                "adapter": str(model.lora is not None).lower(),
                "intents": str(len(model.card.intents)),
                "max_model_len": str(self.settings.max_model_len),
            }
        )

    def served(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default), or 404."""
        if name is None:
            name = self.default
        model = self.models.get(name)
        if model is None:
            raise ServiceError(
                404, "model_not_found", f"no model {name!r} is served here (GET /v1/models lists them)", field="model"
            )
        return model

    @classmethod
    async def start(cls, settings: Settings, model_dirs: dict[str, Path]) -> IntentEngine:
        """Load the models (the default first) into a new vLLM engine and warm each up (grammar compiled, caches
        primed)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = settings.engine_args(*model_dirs.values())
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        single_pass = bool(settings.single_pass_typicality(*model_dirs.values()))
        openai = await OpenAIServing.create(llm, model_dirs)
        models = [
            await served_model(settings, llm, openai, name, model_dir, single_pass=single_pass)
            for name, model_dir in model_dirs.items()
        ]
        uncertain = None
        if settings.record_uncertain is not None:
            uncertain = UncertainLog(
                settings.record_uncertain,
                confidence=settings.record_uncertain_confidence,
                max_bytes=settings.record_uncertain_max_bytes,
            )
            log.info("recording uncertain /v1/intents requests in %s", settings.record_uncertain)
        engine = cls(llm, settings, models, openai, uncertain=uncertain)
        for model in models:
            await engine.warm_up(model)
        return engine

    async def warm_up(self, model: ServedModel) -> None:
        """One request through ``model`` (its grammar compiled, its adapter loaded), counted in no metric."""
        ids = model.predictor.prompt_ids("hello", system_prompt=None, history=(), field="text")
        params = model.predictor.sampling_params("hello")
        await self._label(model, ids, params, True, "warmup", time.perf_counter(), "hello", ())

    async def add_model(self, name: str, model_dir: Path) -> ServedModel:
        """Serve one more adapter directory of the engine's base, warmed up before any request can name it; the other
        models keep answering meanwhile (``POST /v1/admin/models``)."""
        async with self._lock:
            if name in self.models:
                raise ServiceError(409, "model_exists", f"a model {name!r} is served already", field="name")
            if len(self.models) >= MAX_MODELS:
                raise ServiceError(409, "too_many_models", f"this server holds {MAX_MODELS} models at most")
            await asyncio.to_thread(self._check_adapter, model_dir)
            await self.openai.add_adapter(name, model_dir)
            single_pass = self.llm.vllm_config.kv_transfer_config is not None
            model = await served_model(self.settings, self.llm, self.openai, name, model_dir, single_pass=single_pass)
            try:
                await self.warm_up(model)
            except BaseException:
                await self.openai.remove_adapter(name)
                raise
            self._register(model)
            log.info("serving %s as %r", model_dir, name)
            return model

    async def remove_model(self, name: str) -> None:
        """Stop serving an adapter (``DELETE /v1/admin/models/{name}``); requests already decoding with it finish.
        The default model stays: it is what requests that name none get."""
        async with self._lock:
            await self._remove(name)

    async def _remove(self, name: str) -> None:
        model = self.served(name)
        if name == self.default:
            raise ServiceError(409, "default_model", f"{name!r} is the default model: it cannot be removed")
        if model.lora is None:
            raise ServiceError(409, "base_model", f"{name!r} is the engine's own weights: it cannot be removed")
        del self.models[name]
        await self.openai.remove_adapter(name)
        metrics.MODEL_INFO.remove(name)
        log.info("no longer serving %r", name)

    def _check_adapter(self, model_dir: Path) -> None:
        """Refuse a directory that cannot join this engine: 404 where there is no adapter, 409 where this engine
        cannot take it (no LoRA, another base, a larger rank)."""
        from service.modelcard import ADAPTER_CONFIG, ModelCardError, adapter_rank, is_adapter_dir, weights_dir

        lora_config = self.llm.vllm_config.lora_config
        if lora_config is None:
            raise ServiceError(
                409,
                "lora_off",
                "this server was started without adapter directories (vLLM's LoRA is off): restart it with one",
            )
        try:
            found = is_adapter_dir(model_dir)
        except (OSError, ValueError):  # unreadable, or not a path at all (a NUL byte)
            found = False
        if not found:
            raise ServiceError(
                404, "adapter_not_found", f"{model_dir} is not an adapter directory (no {ADAPTER_CONFIG})", field="path"
            )
        try:
            base = weights_dir(model_dir).resolve()
        except ModelCardError as exc:
            raise ServiceError(409, "incompatible_model", str(exc), field="path") from None
        if base != Path(self.llm.model_config.model).resolve():
            message = f"{model_dir} is an adapter of {base}, not of this server's base {self.llm.model_config.model}"
            raise ServiceError(409, "incompatible_model", message, field="path")
        rank = adapter_rank(model_dir)
        if rank > lora_config.max_lora_rank:
            message = f"{model_dir} has rank {rank}, over the {lora_config.max_lora_rank} this engine was started with"
            raise ServiceError(409, "incompatible_model", message, field="path")

    def shutdown(self) -> None:
        self.llm.shutdown()
        for model in self.models.values():
            if model.predictor.typicality is not None:
                model.predictor.typicality.shutdown()
        if self.uncertain is not None:
            self.uncertain.close()

    async def check_health(self) -> None:
        """Raises when the engine is dead (its core process exited or errored)."""
        await self.llm.check_health()

    def _room(self, prompt_ids: Sequence[int], wanted: int) -> int:
        return max(1, min(wanted, self.settings.max_new_tokens_cap, self.settings.max_model_len - len(prompt_ids)))

    # -------------------------------------------------------------------------------- generation

    async def stream(
        self, model: ServedModel, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[Generation]:
        """Generate with ``model``, yielding updates (vLLM's own metrics count their tokens and times)."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        async for out in self.llm.generate(prompt, params, vllm_request_id(), lora_request=model.lora):
            yield Generation(decoded=Decoded.from_output(out), finished=out.finished)

    async def _final(self, model: ServedModel, prompt_ids: list[int], params: SamplingParams) -> Generation:
        last = None
        async for last in self.stream(model, prompt_ids, params):
            pass
        assert last is not None and last.finished
        return last

    def chat_params(self, request: EasRequest, model: ServedModel, prompt_ids: Sequence[int]) -> SamplingParams:
        """Free-form sampling for ``POST /``; temperature 0 or top_k 1 (the reference client's default) is greedy:
        the most likely token whatever the temperature, so vLLM decodes it as greedy."""
        from vllm import SamplingParams

        greedy = request.temperature == 0 or request.top_k == 1
        # top_k at or above the vocabulary (or -1) means every token: vLLM's 0. Passing a huge value
        # through would overflow the engine's request serialisation (a 500 found by tests/test_hostile.py).
        all_tokens = request.top_k == -1 or request.top_k >= len(model.predictor.tokenizer)
        return SamplingParams(
            temperature=0.0 if greedy else request.temperature,
            top_k=0 if greedy or all_tokens else request.top_k,
            top_p=1.0 if greedy else request.top_p,
            max_tokens=self._room(prompt_ids, request.max_new_tokens),
            stop_token_ids=model.predictor.stop_ids,
            output_kind=self._kinds.CUMULATIVE if request.use_stream_chat else self._kinds.FINAL_ONLY,
        )

    def prepare_chat(self, request: EasRequest, name: str | None) -> tuple[ServedModel, list[int], SamplingParams]:
        """``POST /``: the model named ``name``, the prompt's token ids and sampling (refusing a prompt that does not
        fit)."""
        model = self.served(name)
        ids = model.predictor.prompt_ids(
            request.prompt, system_prompt=request.system_prompt, history=request.history, field="prompt"
        )
        return model, ids, self.chat_params(request, model, ids)

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
        model: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[IntentPrediction]:
        """Label utterances with the model named ``model`` (None: the default): all prompts are checked first, then
        submitted at once (vLLM batches them)."""
        start = time.perf_counter()
        served = self.served(model)
        predictor = served.predictor
        fields = fields or [f"texts.{i}" for i in range(len(texts))]
        prompts = [
            predictor.prompt_ids(text, system_prompt=system_prompt, history=history, field=field)
            for text, field in zip(texts, fields)
        ]
        params = [predictor.sampling_params(text, history=history, constrained=constrained) for text in texts]
        if len(prompts) == 1:
            return [await self._label(served, prompts[0], params[0], constrained, ROUTE, start, texts[0], history)]
        return list(
            await asyncio.gather(
                *(
                    self._label(served, ids, p, constrained, ROUTE, start, text, history)
                    for ids, p, text in zip(prompts, params, texts)
                )
            )
        )

    async def _label(
        self,
        model: ServedModel,
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
        predictor = model.predictor
        if predictor.typicality is None:
            generation = await self._final(model, ids, params)
            typicality = generation.decoded.typicality
        else:
            generation, typicality = await asyncio.gather(
                self._final(model, ids, params), _typicality_of(predictor.typicality, ids)
            )
        answer = predictor.answer(generation.decoded, typicality, constrained=constrained)
        if answer.malformed:
            metrics.MALFORMED.labels(route, model.name).inc()
        if route != "warmup":
            if answer.rejection is not None:
                metrics.OUT_OF_SCOPE.labels(answer.rejection, model.name).inc()
            for call in answer.calls:
                metrics.PREDICTED_INTENTS.labels(model.intent_label(call.name), model.name).inc()
            if answer.ranking:  # the intent the model wrote, also when the out-of-scope rule rejected it
                written = model.intent_label(answer.ranking[0][0])
                metrics.CONFIDENCE.labels(written, model.name).observe(answer.confidence)
                if answer.typicality is not None:
                    metrics.TYPICALITY.labels(written, model.name).observe(answer.typicality)
            if self.uncertain is not None and constrained:  # only intent answers carry the scores it orders by
                self.uncertain.record(text, history, answer, model.name)
        return IntentPrediction(
            intents=[IntentCall(name=c.name, args=list(c.args)) for c in answer.calls],
            raw=answer.raw,
            confidence=round(answer.confidence, 6),
            ranking=[RankedIntent(name=name, confidence=round(p, 6)) for name, p in answer.ranking if p >= 5e-7],
            oos_reason=answer.rejection,
            typicality=None if answer.typicality is None else round(answer.typicality, 6),
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


def typicality_source(single_pass: bool, scorer: TypicalityScorer | None) -> str:
    """Where the served answers' typicality comes from (logged at start)."""
    if scorer is not None:
        return "a second forward pass (transformers)"
    if single_pass:
        return "vLLM's own forward pass"
    return "none (turned off, or the model has no typicality.npz)"


async def served_model(
    settings: Settings, llm: AsyncLLM, openai: OpenAIServing, name: str, model_dir: Path, *, single_pass: bool
) -> ServedModel:
    """One model of the engine, its predictor built from its card (``single_pass``: vLLM scores typicality in its own
    forward pass; else a merged model's second pass scores it, off the event loop)."""
    card = read_card(model_dir)
    if card is None:
        log.warning("%s has no intentlm.json: default system prompt, any intent name", model_dir)
        card = ModelCard()
    lora = openai.models.lora_requests.get(name)
    scorer = None
    if not single_pass and lora is None:
        scorer = await asyncio.to_thread(server_typicality, settings, model_dir)
    log.info("%s: typicality from %s", name, typicality_source(single_pass, scorer))
    predictor = Predictor(
        card,
        llm.get_tokenizer(),
        max_model_len=settings.max_model_len,
        max_new_tokens=settings.intent_max_tokens,
        oos_rule=card.oos_rule(settings.oos_threshold, settings.typicality_threshold),
        oos_label=settings.oos_label,
        typicality=scorer,
    )
    return ServedModel(name, model_dir, predictor, lora)


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
