"""service.scope: the out-of-scope rule, and how the card's thresholds and the operator's settings combine."""

from __future__ import annotations

from pathlib import Path

from service.modelcard import ModelCard, read_card, write_card
from service.scope import OutOfScopeRule


def test_rule_rejects_below_any_threshold_and_says_which() -> None:
    rule = OutOfScopeRule(confidence_threshold=0.5, typicality_threshold=0.3)
    assert not rule.rejects(0.5, 0.3)
    assert rule.rejects(0.49, 1.0) and rule.rejects(1.0, 0.29)
    assert not rule.rejects(0.9, None)  # a reply without typicality is judged on its confidence alone
    assert [rule.rejection(*scores) for scores in ((0.4, 0.1), (0.9, 0.1), (0.9, 0.9))] == [
        "confidence",
        "typicality",
        None,
    ]
    assert not OutOfScopeRule().rejects(0.0, 0.0)


def test_settings_override_the_cards_thresholds(tmp_path: Path) -> None:
    write_card(tmp_path, ModelCard(intents=["a"], oos_threshold=0.4, typicality_threshold=0.2))
    card = read_card(tmp_path)
    assert card is not None and card.oos_rule() == OutOfScopeRule(0.4, 0.2)
    assert card.oos_rule(0.0, None) == OutOfScopeRule(0.0, 0.2)  # an operator's 0 turns a gate off
    assert ModelCard().oos_rule() == OutOfScopeRule(0.0, 0.0)
