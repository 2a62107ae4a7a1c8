"""Synthetic out-of-scope records: cue words come from the data, generations take the data's style.

The generation itself runs through the real base model in tests/test_train.py (the full run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TRAIN_FILE
from training.data.dataset import Record, load_dataset
from training.config import TrainConfig
from training.data.synthetic_oos import DataStyle, cue_words, restyle
from training.trainer import TrainError, synthetic_oos


def test_cue_words_point_to_one_intent_and_function_words_are_not_cues() -> None:
    cues = cue_words(load_dataset(TRAIN_FILE))
    assert {"alarm", "weather", "volume", "lights", "vacuum"} <= cues
    assert not {"the", "me", "please", "what", "and", "this"} & cues


def test_a_generation_is_restyled_to_the_data() -> None:
    lower_plain = DataStyle.of([Record("set an alarm for six am", "alarm_set(six am)"),
                                Record("what's the quick brown fox jumping over the lazy dog", "datetime_query()")])
    assert restyle("What's the best pizza in Rome? Tell me.", lower_plain) == "what's the best pizza in rome"
    assert restyle('"Hello there!" I said.\nMore text', lower_plain) == "hello there i said"  # first line
    assert restyle("Why is 1.75 cm small?", lower_plain) == "why is cm small"  # digits are not in the data
    assert restyle("Wonderful!", lower_plain) is None  # too short for a request
    assert restyle(" ".join(["word"] * 20), lower_plain) is None  # too long
    cased = DataStyle.of([Record("Is it 6 yet? The quick brown fox jumps over the lazy dog", "datetime_query()")])
    assert restyle("Is it 6 already? Yes.", cased) == "Is it 6 already"


def test_a_base_model_without_a_chat_template_is_refused_before_any_compute(tmp_path: Path) -> None:
    records = [Record("set an alarm for six am", "alarm_set(six am)")] * 10
    no_template = type("Tokenizer", (), {"chat_template": None})()
    assert synthetic_oos(records, TrainConfig(synthetic_oos=0), tmp_path, no_template) == []
    with pytest.raises(TrainError, match="chat template"):
        synthetic_oos(records, TrainConfig(synthetic_oos=0.5), tmp_path, no_template)
