"""Stratified, reproducible splits through the CLI, on the real training data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TRAIN_FILE

from service.dataset import Record, load_dataset
from training.data.cli import data
from training.data.split import SplitError, composed_units, split_records, stratum


def run_split(tmp_path: Path, *args: object, source: Path = TRAIN_FILE) -> tuple[list[Record], list[Record]]:
    train, test = tmp_path / "train.json", tmp_path / "val.json"
    result = CliRunner().invoke(
        data, ["split", str(source), "--train-out", str(train), "--test-out", str(test), *map(str, args)]
    )
    assert result.exit_code == 0, result.output
    return load_dataset(train), load_dataset(test)


def key(record: Record) -> tuple:
    return (record.instruction, record.output)


def test_split_is_stratified_complete_and_keeps_order(tmp_path: Path) -> None:
    records = load_dataset(TRAIN_FILE)
    train, test = run_split(tmp_path, "--test-ratio", "0.1")
    assert len(test) == round(len(records) * 0.1) == 115
    assert sorted(map(key, train + test)) == sorted(map(key, records))
    order = {key(r): i for i, r in enumerate(records)}
    assert [order[key(r)] for r in train] == sorted(order[key(r)] for r in train)
    # Every single intent keeps about its share (80 each: 8 to test; the records outside composed units exactly).
    test_single = Counter(stratum(r) for r in test if len(r.calls()) == 1)
    assert len(test_single) == 12 and min(test_single.values()) >= 5 and max(test_single.values()) <= 12
    # Multi-intent records reach the test side too, and every intent stays in training.
    test_multi = [r for r in test if len(r.calls()) > 1]
    assert 15 <= len(test_multi) <= 21
    assert {name for r in test for name in stratum(r)} <= {name for r in train for name in stratum(r)}

    # HWU64 composes its two-intent records from single-intent utterances of the same file: no test utterance,
    # alone or as half of a two-intent record, is trained on (every one of the validation side's was before).
    def halves(side: list[Record]) -> set[str]:
        return {half for r in side for half in r.instruction.split(", and then ")}

    assert not halves(test) & halves(train)


def test_composed_records_stay_with_their_parts() -> None:
    """A two-call record joining two single-call instructions is one unit with them, and units sharing a part merge;
    the connective is the data's (training.data.compose), instructions compare ignoring case and spacing."""
    records = [
        Record("wake me at six", "alarm_set(six)"),
        Record("lights off", "iot_hue_lightoff()"),
        Record("play jazz", "play_music(jazz)"),
        Record("what time is it", "datetime_query()"),
        Record("wake me at six, and then lights off", "alarm_set(six);iot_hue_lightoff()"),
        Record("Lights  off, and then play jazz", "iot_hue_lightoff();play_music(jazz)"),
        Record("what time is it, and then tell me a joke", "datetime_query();oos()"),
    ]
    assert composed_units(records) == [[0, 1, 2, 4, 5], [3, 6]]
    assert composed_units(records[:4]) == []  # no multi-call records, no connective
    # The test side's share is round(7 * 0.3) = 2 records: the unit of five does not fit, the unit of two does.
    result = split_records(records, 0.3)
    assert [r.instruction for r in result.test] == ["what time is it", "what time is it, and then tell me a joke"]


def test_split_is_reproducible_and_seeded(tmp_path: Path) -> None:
    first = run_split(tmp_path / "a", "--test-ratio", "0.2")
    again = run_split(tmp_path / "b", "--test-ratio", "0.2", "--seed", "42")
    other = run_split(tmp_path / "c", "--test-ratio", "0.2", "--seed", "7")
    assert [list(map(key, side)) for side in first] == [list(map(key, side)) for side in again]
    assert list(map(key, first[1])) != list(map(key, other[1]))
    assert (tmp_path / "a" / "val.json").read_bytes() == (tmp_path / "b" / "val.json").read_bytes()


def records_of(outputs: list[str]) -> list[Record]:
    return [Record(f"utterance {i}", output) for i, output in enumerate(outputs)]


def test_tiny_strata() -> None:
    # One record per combination: pooled, so the test side still gets its share.
    rare = records_of([f"a();b{i}()" for i in range(10)] + ["a()"] * 10)
    result = split_records(rare, 0.5)
    assert len(result.test) == 10
    assert sum(len(r.calls()) > 1 for r in result.test) == 5
    # A stratum of two keeps one in training whatever the ratio.
    pair = records_of(["a()", "a()", "b()", "b()"])
    result = split_records(pair, 0.9)
    assert Counter(stratum(r) for r in result.train) == {("a",): 1, ("b",): 1}
    with pytest.raises(SplitError, match="one side would be empty"):
        split_records(records_of(["a()"] * 3), 0.1)
    with pytest.raises(SplitError, match="between 0 and 1"):
        split_records(pair, 1.0)


def test_bad_input_and_options_leave_outputs_untouched(tmp_path: Path) -> None:
    train, test = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text("old train")
    test.write_text("old test")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "a()"}, {"instruction": "b", "output": "b(("}]))
    runner = CliRunner()
    result = runner.invoke(
        data, ["split", str(bad), "--test-ratio", "0.5", "--train-out", str(train), "--test-out", str(test)]
    )
    assert result.exit_code == 1 and f"{bad}:1: record 2: field 'output':" in result.output
    result = runner.invoke(
        data, ["split", str(TRAIN_FILE), "--test-ratio", "1.5", "--train-out", str(train), "--test-out", str(test)]
    )
    assert result.exit_code == 2 and "--test-ratio" in result.output
    result = runner.invoke(
        data, ["split", str(TRAIN_FILE), "--test-ratio", "0.1", "--train-out", str(train), "--test-out", str(train)]
    )
    assert result.exit_code == 2 and "must be different files" in result.output
    assert train.read_text() == "old train" and test.read_text() == "old test"
