"""Retrieved examples (service.examples): which training records a request is shown, and how the prompt shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.examples import EXAMPLES_FILE, ExampleIndex, examples_of
from service.prompt import build_prompt, chatml, messages_for

RECORDS = [
    ("turn off the lights in the kitchen", "iot_hue_lightoff(kitchen)"),
    ("turn off the lights in this room please", "iot_hue_lightoff(room)"),
    ("set an alarm for seven am", "alarm_set(seven am)"),
    ("what is the weather tomorrow", "weather_query(tomorrow)"),
    ("set an alarm for seven am, and then what is the weather tomorrow", "alarm_set(seven am);weather_query(tomorrow)"),
]


def test_the_most_similar_records_come_last_nearest_the_request() -> None:
    index = ExampleIndex(RECORDS, k=2)
    assert index.neighbours("please turn off the lights in the bedroom") == [RECORDS[1], RECORDS[0]]
    assert index.neighbours("Turn off the lights in the KITCHEN")[-1] == RECORDS[1]  # never the record itself


def test_a_record_never_sees_itself_its_halves_or_a_record_sharing_a_half() -> None:
    index = ExampleIndex(RECORDS, k=3, joiner=", and then ")
    shown = index.neighbours("set an alarm for seven am, and then what is the weather tomorrow")
    assert RECORDS[2] not in shown and RECORDS[3] not in shown and RECORDS[4] not in shown
    # a two-intent request sharing one half with a two-intent record does not get that record either
    shared = index.neighbours("set an alarm for seven am, and then turn off the lights in the kitchen")
    assert RECORDS[4] not in shared and RECORDS[2] not in shared and RECORDS[0] not in shared


def test_the_index_round_trips_through_the_model_directory(tmp_path: Path) -> None:
    assert ExampleIndex.load(tmp_path) is None and examples_of(None, "anything") == []
    ExampleIndex(RECORDS, k=2, joiner=", and then ").save(tmp_path)
    loaded = ExampleIndex.load(tmp_path)
    assert (tmp_path / EXAMPLES_FILE).is_file() and loaded is not None
    assert (loaded.records, loaded.k, loaded.joiner) == (RECORDS, 2, ", and then ")
    assert loaded.neighbours("switch off the kitchen lights") == ExampleIndex(RECORDS, k=2).neighbours(
        "switch off the kitchen lights")


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ExampleIndex(RECORDS, k=0)


def test_the_prompt_shows_the_examples_then_the_request() -> None:
    examples = [RECORDS[0], RECORDS[1]]
    user = ("Similar requests:\nturn off the lights in the kitchen => iot_hue_lightoff(kitchen)\n"
            "turn off the lights in this room please => iot_hue_lightoff(room)\nRequest: lights off")
    assert build_prompt("lights off", examples=examples) == chatml(
        [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": user}])
    assert build_prompt("lights off", examples=examples, apply_chat_template=False) == user + "\n"
    # folded history is part of the request; in chat mode the past turns stay turns
    assert messages_for("off", history=[["lights"]], examples=examples)[-1]["content"].endswith("Request: lights off")
    chat = messages_for("off", history=[["lights", "iot_hue_lightoff()"]], history_mode="chat", examples=examples)
    assert chat[1]["content"] == "lights" and chat[-1]["content"].endswith("Request: off")
    assert build_prompt("lights off") == build_prompt("lights off", examples=[])  # no examples: the plain prompt
