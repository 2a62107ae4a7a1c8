"""The one inference path from an utterance to its intent answer, whichever vLLM engine decodes it.

The server (``service.engine``, vLLM's ``AsyncLLM``) and ``intentlm eval --model``, pre-labelling and
training's end-of-run scoring (``eval.runner``, vLLM's offline ``LLM``) all answer through a
``Predictor``: it renders and tokenizes the prompt, builds the sampling parameters under the intent
grammar, and turns what vLLM decoded into an answer (the parsed calls, the complete calls of an
answer cut off by the token limit, the confidence, the typicality and the out-of-scope rule). The
engines only decode, so the same request gets the same answer and scores from every entry point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError
from service.intents import Call, decoding_grammar, format_calls, try_parse
from service.modelcard import ModelCard
from service.prompt import END_OF_TURN, History, build_prompt, fold_history
from service.scope import DEFAULT_OOS_LABEL, OutOfScopeRule

if TYPE_CHECKING:
    from vllm import SamplingParams

    from service.typicality import TypicalityScorer

INTENT_MAX_TOKENS = 64  # the reference script's max_new_tokens: the answer budget of every entry point
RANKING_CANDIDATES = (
    5  # alternatives vLLM returns per decoding step (its top log-probabilities), what the ranking reads
)
RANKING_SIZE = 5  # intents in a reply's ranking


@dataclass(frozen=True)
class Decoded:
    """What an engine decoded for one prompt: the text, its tokens, each token's log-probability, the most likely
    tokens at each step (``alternatives``: token id → log-probability, the decoded token among them), and the
    prompt's typicality when the engine scored it in its own pass (service.vllm_states)."""

    text: str
    token_ids: Sequence[int]
    logprobs: Sequence[float]
    finish_reason: str | None
    typicality: float | None = None
    alternatives: Sequence[Mapping[int, float]] = ()

    @classmethod
    def from_output(cls, output: Any) -> Decoded:
        """From a vLLM ``RequestOutput`` (whose logprobs hold the sampled token's entry at each step)."""
        from service.vllm_states import TYPICALITY_KEY

        completion = output.outputs[0]
        steps = completion.logprobs or []
        logprobs = [step[token].logprob for token, step in zip(completion.token_ids, steps)]
        alternatives = [{token: entry.logprob for token, entry in step.items()} for step in steps]
        typicality = (output.kv_transfer_params or {}).get(TYPICALITY_KEY)
        return cls(
            completion.text, list(completion.token_ids), logprobs, completion.finish_reason, typicality, alternatives
        )


@dataclass(frozen=True)
class Answer:
    """One utterance's answer: the calls replied (``oos()`` when the out-of-scope rule rejected the model's)
    and the scores. ``raw`` is what the model wrote, stripped, even when the answer was rejected."""

    calls: list[Call]
    raw: str
    confidence: float
    typicality: float | None
    rejection: str | None  # the score that rejected the model's answer as out of scope ("confidence", ...)
    malformed: bool  # what the model wrote does not parse
    ranking: list[tuple[str, float]]  # the first call's likeliest intents (``Predictor.ranking``)

    @property
    def text(self) -> str:
        """The answer as evaluation scores it: the calls, canonically written, or the raw text when none parsed."""
        return format_calls(self.calls) if self.calls else self.raw


class Predictor:
    """Everything between an utterance and its answer that depends on the model, not on the engine."""

    def __init__(
        self,
        card: ModelCard,
        tokenizer: Any,
        *,
        max_model_len: int,
        max_new_tokens: int = INTENT_MAX_TOKENS,
        oos_rule: OutOfScopeRule | None = None,
        oos_label: str = DEFAULT_OOS_LABEL,
        typicality: TypicalityScorer | None = None,
    ) -> None:
        """``oos_rule`` None: the card's calibrated thresholds. ``typicality``: the second-pass scorer, where the
        engine does not score typicality itself (None: the engine's score, if any, is the answer's)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        self.card = card
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.oos_rule = card.oos_rule() if oos_rule is None else oos_rule
        self.oos_label = oos_label
        self.typicality = typicality
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self.stop_ids = [eot] if isinstance(eot, int) and eot != tokenizer.unk_token_id else []
        # A card without intents: any syntactically valid name (docs/serving.md).
        self._constrained = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            logprobs=RANKING_CANDIDATES,
            stop_token_ids=self.stop_ids,
            structured_outputs=StructuredOutputsParams(grammar=decoding_grammar(card.intents)),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        self._free = self._constrained.clone()
        self._free.structured_outputs = None
        self._piece = lru_cache(maxsize=None)(lambda token: tokenizer.decode([token]))
        self._names = [f"{name}(" for name in card.intents]

    def prompt_ids(
        self, text: str, *, system_prompt: str | None = None, history: History = (), field: str = "text"
    ) -> list[int]:
        """Render (``service.prompt.build_prompt``) and tokenize a prompt, without added special tokens (the chat
        template writes them); refuse (422 naming ``field``) one that leaves no room to answer."""
        prompt = build_prompt(
            text,
            system_prompt=self.card.system_prompt if system_prompt is None else system_prompt,
            history=history,
            apply_chat_template=self.card.apply_chat_template,
            tokenizer=self.tokenizer,
        )
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) >= self.max_model_len:
            raise ServiceError(
                422,
                "prompt_too_long",
                f"the prompt is {len(ids)} tokens; the context is {self.max_model_len}",
                field=field,
            )
        return ids

    def sampling_params(self, text: str, *, history: History = (), constrained: bool = True) -> SamplingParams:
        """Greedy decoding of one utterance: free, under the model's intent grammar, or (for a model whose
        arguments are copied from the text) that grammar with arguments limited to word spans of the utterance
        and its history, built per request (≈ 2 ms to compile, service/intents.py)."""
        if not constrained:
            return self._free
        if not self.card.args_from_text:
            return self._constrained
        from vllm.sampling_params import StructuredOutputsParams

        params = self._constrained.clone()
        params.structured_outputs = StructuredOutputsParams(
            grammar=decoding_grammar(self.card.intents, fold_history(text, history))
        )
        return params

    def answer(self, decoded: Decoded, typicality: float | None, *, constrained: bool = True) -> Answer:
        """Parse what was decoded, score it and apply the out-of-scope rule (not to an answer that does not parse:
        there is nothing to reject)."""
        raw = decoded.text.strip()
        calls = try_parse(raw)
        if calls is None and constrained and decoded.finish_reason == "length":
            # Cut off by the token budget mid-call: keep the complete calls before the last ';'.
            calls = try_parse(raw.rpartition(";")[0])
        malformed = calls is None
        confidence = self.confidence(decoded)
        rejection = self.oos_rule.rejection(confidence, typicality) if calls else None
        ranking = self.ranking(decoded) if constrained and not malformed else []
        if rejection is not None:
            calls = [Call(self.oos_label, ())]
        return Answer(calls or [], raw, confidence, typicality, rejection, malformed, ranking)

    def confidence(self, decoded: Decoded) -> float:
        """The probability the model gives to the intent names it wrote, for its least sure call.

        Each call's confidence is the product over the tokens that spell its name (up to its '('): the
        decision "which intent" is what out-of-scope detection needs, while argument tokens (free text
        copied from the utterance) would make long slots look uncertain. The answer's confidence is the
        minimum over its calls, so a two-intent answer is not penalised for being two decisions (a
        product over all names rejected sure multi-intent answers as out of scope). vLLM computes the
        log-probabilities after the grammar mask (checked in vLLM 0.32's model runner: the bitmask is
        applied to the logits the sampler receives), so under constrained decoding this is the model's
        choice among the allowed intents: the maximum-softmax-probability out-of-scope signal. The card's
        calibrated temperature divides the log-probability, so that the confidence matches the accuracy.
        """
        if not decoded.logprobs:
            return 0.0
        calls: list[float] = [0.0]
        in_name = True
        for token, logprob in zip(decoded.token_ids, decoded.logprobs):
            if in_name:
                calls[-1] += logprob
            for mark in self._piece(token):  # each token's '(' and ';' in order, decoded once per token id
                if mark in "(;":
                    in_name = mark == ";"
                    if in_name:
                        calls.append(0.0)
        return self._calibrated(min(calls))

    def ranking(self, decoded: Decoded) -> list[tuple[str, float]]:
        """The first call's most likely intents with calibrated probabilities, most likely first (Rasa's
        ``intent_ranking``), from the decoding's own distribution: no extra forward pass.

        At each token of the decoded name, every other allowed token vLLM returned (its top log-probabilities,
        after the grammar mask) starts a branch; a branch that only one intent name continues carries that intent's
        whole probability (every way the grammar lets the model spell the rest leads to it). Branches shared by
        several intents are left out, since their split is unknown, so the ranking sums to at most 1. The decoded
        intent gets the calibrated confidence of its name; the others share what calibration leaves, in
        proportion to their probabilities."""
        prefix, path = "", 0.0
        raw: dict[str, float] = {}
        for token, logprob, step in zip(decoded.token_ids, decoded.logprobs, decoded.alternatives):
            for other, other_logprob in step.items():
                if other != token and (only := self._only_name(prefix + self._piece(other))) is not None:
                    raw[only] = raw.get(only, 0.0) + math.exp(path + other_logprob)
            prefix, path = prefix + self._piece(token), path + logprob
            if "(" in prefix:
                break
        chosen = prefix.partition("(")[0]
        if not chosen:
            return []
        top = self._calibrated(path)
        share = (1 - top) / (1 - math.exp(path)) if path < 0 else 0.0
        others = sorted(((name, p * share) for name, p in raw.items() if name != chosen), key=lambda e: -e[1])
        return [(chosen, top), *others[: RANKING_SIZE - 1]]

    def _only_name(self, text: str) -> str | None:
        """The one intent whose call can begin with ``text``, or None when none or several can."""
        found = [name for name in self._names if name.startswith(text) or text.startswith(name)]
        return found[0][:-1] if len(found) == 1 else None

    def _calibrated(self, logprob: float) -> float:
        """A name's probability under the card's calibrated temperature (what makes confidence match accuracy)."""
        return math.exp(logprob / self.card.confidence_temperature)
