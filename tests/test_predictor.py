"""The predictor's answer from what an engine decoded: parsing, recovery, confidence, the out-of-scope rule.

These need no model (a tokenizer of fixed pieces); the same predictor answering through the real engines is
tested in test_server.py and test_eval_engine.py (the server and ``intentlm eval`` agree on every answer)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.intents import Call
from service.modelcard import ModelCard
from service.predictor import Decoded, Predictor
from service.scope import OutOfScopeRule

PIECES = ["alarm", "_set", "(", "7", " am", ")", ";", "iot", "()", "<|im_end|>"]


class PieceTokenizer:
    """Decodes token ids from a fixed table (what the predictor's confidence needs of a tokenizer)."""

    unk_token_id = None

    def decode(self, ids: list[int]) -> str:
        return "".join(PIECES[i] for i in ids)

    def convert_tokens_to_ids(self, token: str) -> int:
        return PIECES.index(token)


def predictor(**card: object) -> Predictor:
    return Predictor(
        ModelCard(intents=["alarm_set", "iot"], **card),
        PieceTokenizer(),
        max_model_len=64,
        oos_rule=OutOfScopeRule(confidence_threshold=0.3),
    )


LOGPROBS = [math.log(p) for p in (0.9, 0.8, 0.5, 0.1, 0.1, 1, 1, 0.5, 1, 0.01)]


def decoded(ids: list[int], finish_reason: str | None = "stop") -> Decoded:
    return Decoded("".join(PIECES[i] for i in ids), ids, [LOGPROBS[i] for i in ids], finish_reason)


def test_confidence_counts_only_intent_name_tokens_of_the_least_sure_call() -> None:
    ids = list(range(len(PIECES)))
    # alarm, _set, "(" (ends the first name): 0.36; then "iot" and "()" of the second call: 0.5.
    assert predictor().confidence(decoded(ids)) == pytest.approx(0.9 * 0.8 * 0.5)
    assert predictor().confidence(decoded(ids[:6])) == pytest.approx(0.9 * 0.8 * 0.5)
    assert predictor().confidence(decoded(ids[7:])) == pytest.approx(0.5)  # end of turn not counted
    assert predictor().confidence(Decoded("", [], [], "stop")) == 0.0
    hot = predictor(confidence_temperature=2.0)
    assert hot.confidence(decoded(ids)) == pytest.approx((0.9 * 0.8 * 0.5) ** 0.5)


def test_an_answer_cut_off_by_the_token_limit_keeps_its_complete_calls() -> None:
    answer = predictor().answer(decoded([0, 1, 2, 3, 4, 5, 6, 7]), None)
    assert answer.malformed and answer.calls == []  # stopped, not cut off: nothing recovered
    answer = predictor().answer(decoded([0, 1, 2, 3, 4, 5, 6, 7], "length"), None)
    assert not answer.malformed and answer.calls == [Call("alarm_set", ("7 am",))]
    assert answer.text == "alarm_set(7 am)" and answer.raw == "alarm_set(7 am);iot"
    free = predictor().answer(decoded([0, 1, 2, 3, 4, 5, 6, 7], "length"), None, constrained=False)
    assert free.malformed and free.text == "alarm_set(7 am);iot"  # free decoding: what it wrote is scored


def test_the_out_of_scope_rule_rejects_by_its_first_failing_score_and_never_an_unparsed_answer() -> None:
    sure = predictor().answer(decoded([7, 8]), typicality=None)
    assert sure.calls == [Call("iot", ())] and sure.rejection is None
    unsure = Predictor(
        ModelCard(intents=["iot"]),
        PieceTokenizer(),
        max_model_len=64,
        oos_rule=OutOfScopeRule(confidence_threshold=0.6, typicality_threshold=0.5),
        oos_label="none",
    )
    rejected = unsure.answer(decoded([7, 8]), typicality=0.9)
    assert rejected.rejection == "confidence" and rejected.text == "none()" and rejected.raw == "iot()"
    assert unsure.answer(decoded([0, 1]), typicality=0.1).rejection is None  # does not parse: nothing to reject
    atypical = predictor().answer(decoded([7, 8]), typicality=0.1)
    assert atypical.rejection is None  # this rule has no typicality threshold


class SizedTokenizer(PieceTokenizer):
    def __len__(self) -> int:
        return len(PIECES)


def test_top_k_1_decodes_greedily_and_sampling_passes_through() -> None:
    """POST /: top_k 1 is the most likely token whatever the temperature (the reference client's default), so vLLM
    decodes it greedily; anything else samples as asked."""
    from service.config import Settings
    from service.engine import IntentEngine, ServedModel
    from service.protocol import EasRequest

    card_predictor = Predictor(ModelCard(intents=["iot"]), SizedTokenizer(), max_model_len=64)
    model = ServedModel("m", Path("m"), card_predictor, None)
    engine = IntentEngine(None, Settings(), [model], None)  # type: ignore[arg-type]
    greedy = engine.chat_params(EasRequest(prompt="hi", temperature=0.95, top_k=1), model, [1, 2])
    assert (greedy.temperature, greedy.top_k, greedy.top_p) == (0.0, 0, 1.0)
    params = engine.chat_params(EasRequest(prompt="hi", temperature=0.9, top_k=5), model, [1, 2])
    assert (params.temperature, params.top_k) == (0.9, 5)


RANKED_PIECES = ["alarm", "_set", "_query", "(", "iot", "()", "al", "arm_set("]


class RankedTokenizer(PieceTokenizer):
    def decode(self, ids: list[int]) -> str:
        return "".join(RANKED_PIECES[i] for i in ids)

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0


def test_ranking_gives_each_branch_that_one_intent_continues_its_whole_probability() -> None:
    ranker = Predictor(ModelCard(intents=["alarm_set", "alarm_query", "iot"]), RankedTokenizer(), max_model_len=64)
    log = math.log
    # Step 1: "alarm" 0.6 (shared by two intents: its split is unknown), "iot" 0.3, "al" 0.1 (shared: unknown).
    # Step 2 after "alarm": "_set" 0.7, "_query" 0.3; step 3: "(" 1.
    steps = [{0: log(0.6), 4: log(0.3), 6: log(0.1)}, {1: log(0.7), 2: log(0.3)}, {3: 0.0}]
    answer = Decoded("alarm_set()", [0, 1, 3], [log(0.6), log(0.7), 0.0], "stop", alternatives=steps)
    ranking = ranker.ranking(answer)
    assert [name for name, _ in ranking] == ["alarm_set", "iot", "alarm_query"]
    assert [p for _, p in ranking] == pytest.approx([0.42, 0.3, 0.18])
    assert ranker.answer(answer, None).ranking == ranking

    # A calibrated top probability; the others share the rest in proportion, and the sum stays at most 1.
    sure = Predictor(
        ModelCard(intents=["alarm_set", "alarm_query", "iot"], confidence_temperature=0.5),
        RankedTokenizer(),
        max_model_len=64,
    ).ranking(answer)
    assert sure[0] == ("alarm_set", pytest.approx(0.42**2))
    assert sure[1][1] / sure[2][1] == pytest.approx(0.3 / 0.18)
    assert sum(p for _, p in sure) <= 1 + 1e-9
    # Free-form answers and answers that do not parse have no ranking.
    assert ranker.answer(answer, None, constrained=False).ranking == []
