"""service.scope: the familiarity score, the vocabulary in the card, and the out-of-scope rule.

(`intentlm model scope`, which writes the vocabulary: tests/test_typicality.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.intents import Call, parse
from service.modelcard import ModelCard, read_card, write_card
from service.scope import ARGUMENT_WEIGHT, Familiarity, OutOfScopeRule, Vocabulary, build_vocabulary, words

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_words_are_lowercased_runs_and_single_han_characters() -> None:
    assert words("What's the Weather, in 2 days?") == ["what's", "the", "weather", "in", "2", "days"]
    assert words("打开 客厅的灯") == ["打", "开", "客", "厅", "的", "灯"]
    assert words("-- !!") == []


def test_vocabulary_separates_context_words_from_argument_words() -> None:
    vocabulary = build_vocabulary([
        ("wake me at seven am", [Call("alarm_set", ("seven am",))]),
        ("turn the lights off", [Call("iot_hue_lightoff")]),
    ])
    assert vocabulary.context == ["at", "lights", "me", "off", "the", "turn", "wake"]
    assert vocabulary.argument == ["am", "seven"]


def test_familiarity_weighs_argument_words_a_quarter() -> None:
    score = Familiarity(Vocabulary(context=["turn", "on", "the"], argument=["lamp"])).score
    assert score("turn on the lamp", [Call("iot_hue_lightup", ("lamp",))]) == 1.0
    # "roomba" is new and in an argument: it weighs a quarter of a context word
    assert score("turn on the roomba", [Call("iot_hue_lightup", ("roomba",))]) == pytest.approx(3 / (3 + ARGUMENT_WEIGHT))
    # the same new word outside any argument weighs a whole word
    assert score("turn on the roomba", [Call("iot_hue_lightup")]) == 0.75
    # a context word that training only saw inside arguments is not familiar as context
    assert score("lamp", []) == 0.0
    assert score("?!", []) == 1.0


def test_familiarity_separates_the_out_of_scope_test_from_the_training_data() -> None:
    """On the real data: the training vocabulary knows in-scope test requests better than out-of-scope ones
    (scored with the gold arguments, so no model is involved)."""
    def records(name: str) -> list[tuple[str, list[Call]]]:
        return [(r["instruction"], parse(r["output"])) for r in json.loads((DATA / name).read_text())]

    familiarity = Familiarity(build_vocabulary(records("smarthome_train.json")))
    inside = [familiarity.score(text, calls) for text, calls in records("smarthome_test.json")]
    outside = [familiarity.score(text, []) for text, _ in records("smarthome_oos_test.json")]
    assert sum(inside) / len(inside) > 0.9 > 0.7 > sum(outside) / len(outside)


def test_rule_rejects_on_either_score_and_ignores_a_missing_familiarity() -> None:
    rule = OutOfScopeRule(confidence_threshold=0.5, familiarity_threshold=0.8)
    assert not rule.rejects(0.5, 0.8)
    assert rule.rejects(0.49, 1.0) and rule.rejects(1.0, 0.79)
    assert not rule.rejects(0.9, None)
    assert [rule.rejection(*scores) for scores in ((0.4, 0.1), (0.9, 0.1), (0.9, 0.9))] == [
        "confidence", "familiarity", None]
    assert not OutOfScopeRule().rejects(0.0, 0.0)


def test_card_keeps_the_vocabulary_and_settings_override_its_thresholds(tmp_path: Path) -> None:
    card = ModelCard(intents=["a"], vocabulary=Vocabulary(context=["x"], argument=["y"]), oos_threshold=0.4,
                     familiarity_threshold=0.7)
    write_card(tmp_path, card)
    again = read_card(tmp_path)
    assert again is not None and again.vocabulary == card.vocabulary
    assert again.oos_rule() == OutOfScopeRule(0.4, 0.7)
    assert again.oos_rule(0.0, None) == OutOfScopeRule(0.0, 0.7)  # an operator's 0 turns a gate off
    assert ModelCard().oos_rule() == OutOfScopeRule(0.0, 0.0)
