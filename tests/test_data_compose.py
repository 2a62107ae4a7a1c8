"""Composed multi-intent records: the connective comes from the data, the calls from single-call records."""

from __future__ import annotations

from collections import Counter

from conftest import TRAIN_FILE

from service.dataset import Record, load_dataset
from training.data.compose import compose_multi_intent, find_joiner


def test_the_smarthome_connective_is_found_and_pairs_cover_every_ordered_intent_pair() -> None:
    records = load_dataset(TRAIN_FILE)
    assert find_joiner(records) == ", and then "
    composed = compose_multi_intent(records, 132, seed=1)
    pairs = Counter(tuple(call.name for call in r.calls()) for r in composed)
    assert len(pairs) == 12 * 11 and set(pairs.values()) == {1}  # each ordered pair of different intents once
    singles = {r.instruction: r.output for r in records if len(r.calls()) == 1}
    for record in composed:
        first, second = record.instruction.split(", and then ")
        assert record.output == f"{singles[first]};{singles[second]}"
    assert compose_multi_intent(records, 132, seed=1) == composed  # seeded


def test_no_multi_call_records_or_no_shared_connective_means_nothing_composed() -> None:
    singles = [Record("turn the lights on", "iot_hue_lightup()"), Record("wake me at six", "alarm_set(six)")]
    assert find_joiner(singles) is None and compose_multi_intent(singles, 10) == []
    mixed = singles + [
        Record("lights on then wake me at six", "iot_hue_lightup();alarm_set(six)"),
        Record("wake me at six plus lights on", "alarm_set(six);iot_hue_lightup()"),
        Record("mute it also play jazz", "audio_volume_mute();play_music(jazz)"),
    ]
    assert find_joiner(mixed) is None  # "then", "plus", "also": no connective in half of them


def test_the_connective_keeps_its_surface_form() -> None:
    records = [
        Record("lights on", "iot_hue_lightup()"),
        Record("play jazz", "play_music(jazz)"),
        Record("lights on ; then play jazz", "iot_hue_lightup();play_music(jazz)"),
        Record("mute ;  then wake me at six", "audio_volume_mute();alarm_set(six)"),
        Record("wake me at five ; then mute", "alarm_set(five);audio_volume_mute()"),
    ]
    assert find_joiner(records) == " ; then "  # the most common spelling
    composed = compose_multi_intent(records, 2)
    assert {r.instruction for r in composed} == {"lights on ; then play jazz", "play jazz ; then lights on"}
