"""eval.calibration: the out-of-scope threshold, ECE, the report figure, and `intentlm eval --calibrate` rules."""

from __future__ import annotations

import random
import statistics

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from eval.calibration import (
    Confidences,
    calibration_png,
    choose_threshold,
    ece_noise,
    expected_calibration_error,
    fit_temperature,
    from_rows,
    reliability,
    rescale,
)
from eval.cli import eval_command
from service.scope import OutOfScopeRule

runs_st = st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60)


@given(runs_st)
def test_threshold_rejects_a_new_correct_answer_with_probability_at_most_1_percent(
    run: list[tuple[float, bool]],
) -> None:
    """The conformal bound: (correct answers below the threshold + 1) / (correct answers + 1) ≤ 1 %, and the
    threshold is the highest such (the next correct score up would break the bound)."""
    conf, ok = [c for c, _ in run], [k for _, k in run]
    right = sorted(c for c, k in run if k)
    t = choose_threshold(conf, ok)
    assert (sum(c < t for c in right) + 1) / (len(right) + 1) <= 0.01 or t == 0.0
    higher = [c for c in right if c > t]
    assert not higher or (sum(c < higher[0] for c in right) + 1) / (len(right) + 1) > 0.01


def test_threshold_needs_99_correct_answers_and_then_rejects_none_of_them() -> None:
    conf = [0.99] * 95 + [0.2, 0.3, 0.4, 0.5, 0.6]
    ok = [True] * 95 + [False] * 5
    assert choose_threshold(conf, ok) == 0.0  # 95 correct answers cannot bound a 1 % rejection rate
    conf, ok = [0.5] + [0.9] * 110 + [0.1, 0.2], [True] * 111 + [False] * 2
    assert choose_threshold(conf, ok) == 0.5  # the lowest correct score: the two wrong answers go
    assert choose_threshold(conf + [0.95] * 89, ok + [True] * 89) == 0.9  # 200 correct: one may go


@given(runs_st)
def test_ece_is_between_0_and_1_and_zero_when_calibrated(run: list[tuple[float, bool]]) -> None:
    conf, ok = [c for c, _ in run], [k for _, k in run]
    assert 0.0 <= expected_calibration_error(conf, ok) <= 1.0
    assert sum(b.count for b in reliability(conf, ok)) == len(conf)
    assert expected_calibration_error([1.0] * 4, [True] * 4) == 0.0


def test_ece_noise_is_the_ece_of_a_perfectly_calibrated_confidence() -> None:
    assert ece_noise([1.0] * 50) == (0.0, 0.0)
    few, many = ece_noise([0.8] * 60), ece_noise([0.8] * 2000)
    assert few[0] > 0.03 > many[0] and few[1] > few[0]  # few records per bin: a biased, noisy figure
    # the mean ECE of expected_calibration_error over the same kind of draws, bins included
    rng = random.Random(1)
    conf = [rng.random() for _ in range(60)] + [0.3, 0.5, 1.0]  # bin edges land where reliability() puts them
    drawn = statistics.mean(expected_calibration_error(conf, [rng.random() < c for c in conf]) for _ in range(400))
    assert ece_noise(conf)[0] == pytest.approx(drawn, abs=0.01)


def test_temperature_recovers_a_known_miscalibration_and_lowers_ece() -> None:
    """Answers right with probability p, reported as p ** 3 (under-confident, T = 3): the fit finds ~3."""
    truth = [0.5 + 0.05 * i for i in range(10)]  # 0.5 .. 0.95
    conf, ok = [], []
    for p in truth:
        right = round(100 * p)
        conf += [p**3] * 100
        ok += [True] * right + [False] * (100 - right)
    t = fit_temperature(conf, ok)
    assert 2.9 < t < 3.1
    assert expected_calibration_error(rescale(conf, t), ok) < 0.01 < expected_calibration_error(conf, ok)
    assert fit_temperature([0.9, 0.8], [True, True]) == 16  # all right: as sure as the grid allows


def test_rows_split_in_and_out_of_scope_on_the_raw_answer() -> None:
    rows = [
        {"gold": "a(x)", "raw": "a(y)", "gold_intent": "a", "confidence": 0.9},
        {"gold": "a()", "raw": "b()", "gold_intent": "a", "confidence": 0.4},
        {"gold": "oos()", "raw": "a()", "gold_intent": "oos", "confidence": 0.3},
    ]
    c = from_rows(rows, "oos")
    assert c == Confidences(in_scope=[0.9, 0.4], in_scope_correct=[True, False], out_of_scope=[0.3])
    assert from_rows([{**rows[0], "confidence": None}], "oos") is None
    assert calibration_png(c, OutOfScopeRule(0.5)).startswith(b"\x89PNG")
    assert c.scores("typicality") is None
    # a score only some rows have is left out; one every row has is drawn beside the confidence
    some = from_rows([{**row, "typicality": t} for row, t in zip(rows, (0.7, 0.6, None))], "oos")
    assert some is not None and some.other == {}
    both = from_rows([{**row, "typicality": t} for row, t in zip(rows, (0.7, 0.6, 0.01))], "oos")
    assert both is not None and both.other["typicality"] == ([0.7, 0.6], [0.01])
    assert both.scores("typicality") == [0.7, 0.6]
    assert calibration_png(both, OutOfScopeRule(0.0, 0.3)).startswith(b"\x89PNG")


def test_calibrate_needs_a_model_and_constrained_decoding(tmp_path) -> None:
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "x", "output": "a()"}]')
    for args in (
        ["--url", "http://127.0.0.1:9", "--data", str(data), "--calibrate"],
        ["--model", str(tmp_path), "--data", str(data), "--calibrate", "--free-form"],
    ):
        result = CliRunner().invoke(eval_command, args)
        assert result.exit_code == 2 and "--calibrate needs --model" in result.output


def test_calibrate_thresholds_typicality_by_default_and_names_what_a_model_lacks(tmp_path) -> None:
    """`_calibrate` on rows as `intentlm eval --model` writes them: the typicality threshold is the lowest correct
    answer's (120 correct), the other thresholds are cleared; a model without the score's data is told what to run."""
    import json

    import click
    import pytest

    from eval.cli import _calibrate
    from service.modelcard import ModelCard, read_card, write_card

    (tmp_path / "config.json").write_text("{}")
    write_card(tmp_path, ModelCard(intents=["a"], oos_threshold=0.5))
    rows = [
        {"gold": "a()", "raw": "a()", "gold_intent": "a", "confidence": 0.9, "typicality": 0.3 + i / 1000}
        for i in range(120)
    ]
    rule = _calibrate(tmp_path, rows, "oos", "typicality", tmp_path / "val.json")
    card = read_card(tmp_path)
    assert card is not None and card.typicality_threshold == pytest.approx(0.3) == rule.typicality_threshold
    assert card.oos_threshold == 0.0
    assert card.metrics["calibration"]["oos_score"] == "typicality"
    with pytest.raises(click.ClickException, match="no typicality statistics .* --oos-score confidence"):
        _calibrate(tmp_path, [{**row, "typicality": None} for row in rows], "oos", "typicality", tmp_path / "val.json")
    assert json.loads((tmp_path / "intentlm.json").read_text())["typicality_threshold"] == pytest.approx(0.3)


def test_calibrate_pools_typicality_with_the_training_requests_cross_fitted_scores(tmp_path) -> None:
    """50 correct validation answers alone cannot bound the cost at 1 %; with the model's 250 cross-fitted training
    scores (typicality.npz) they can: 300 answers may let 2 go, so the threshold is the third lowest score of the pool."""
    import numpy as np
    import pytest

    from eval.cli import _calibrate
    from service.modelcard import ModelCard, read_card, write_card
    from service.typicality import IntentStatistics

    (tmp_path / "config.json").write_text("{}")
    write_card(tmp_path, ModelCard(intents=["a"]))
    rows = [
        {"gold": "a()", "raw": "a()", "gold_intent": "a", "confidence": 0.9, "typicality": 0.5 + i / 1000}
        for i in range(50)
    ]
    assert _calibrate(tmp_path, rows, "oos", "typicality", tmp_path / "val.json").typicality_threshold == 0.0
    held_out = np.array([0.2, 0.6, 0.3] + [0.7] * 247, dtype=np.float32)
    IntentStatistics(("a",), np.zeros((1, 2), np.float32), np.eye(2, dtype=np.float32), held_out).save(tmp_path)
    rule = _calibrate(tmp_path, rows, "oos", "typicality", tmp_path / "val.json")
    card = read_card(tmp_path)
    assert rule.typicality_threshold == pytest.approx(0.5) == card.typicality_threshold  # below: 0.2, 0.3
    assert card.metrics["calibration"]["training_scores"] == 250 and card.metrics["calibration"]["records"] == 50
