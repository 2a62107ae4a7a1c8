"""The dataset reader on awkward files: large, byte-order-marked, lone surrogates, unlabelled."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.dataset import DatasetError, load_dataset
from training.data.cli import data

INTENTS = ["alarm_set", "play_music", "iot_cleaning", "weather_query"]


def test_a_200_mb_file_is_checked_and_split(tmp_path: Path) -> None:
    """Big files just work: streamed line numbers, no quadratic step, memory a few times the file."""
    path = tmp_path / "big.json"
    filler = "please could you " * 60  # ~1 kB records: 200k of them
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        start = 0
        while f.tell() < 200_000_000:
            f.write(
                "".join(
                    json.dumps({"instruction": f"{filler}{i}", "output": f"{INTENTS[i % 4]}(slot {i})"}) + ",\n"
                    for i in range(start, start + 10_000)
                )
            )
            start += 10_000
        f.write('{"instruction": "the end", "output": "alarm_set(", "note": "malformed, on purpose"}\n]\n')
    records = start + 1
    runner = CliRunner()

    began = time.monotonic()
    result = runner.invoke(data, ["check", str(path), "--json", "--no-tokens"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["records"] == records
    assert report["single_intent"] == dict.fromkeys(sorted(INTENTS), start // 4)
    (issue,) = [i for i in report["issues"] if i["severity"] == "error"]
    assert issue["records"] == [{"record": records, "line": records + 1}]

    # The malformed last record stops a split, naming it; nothing is written.
    result = runner.invoke(
        data,
        [
            "split",
            str(path),
            "--test-ratio",
            "0.1",
            "--train-out",
            str(tmp_path / "t.json"),
            "--test-out",
            str(tmp_path / "v.json"),
        ],
    )
    assert result.exit_code == 1
    assert f"{path}:{records + 1}: record {records}: field 'output': missing ')'" in result.output
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "v.json").exists()
    assert time.monotonic() - began < 120  # a generous bound: it takes ~15 s on 2 shared cores


def test_byte_order_mark_and_unicode(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps([{"instruction": "放音乐", "output": "play_music(爵士)"}], ensure_ascii=False).encode()
    )
    (record,) = load_dataset(path)
    assert record.calls()[0].args == ("爵士",)


def test_lone_surrogates_are_refused(tmp_path: Path) -> None:
    """``\\ud800`` is valid JSON but not text: it could never be written back as UTF-8."""
    path = tmp_path / "surrogate.json"
    path.write_text('[\n{"instruction": "a\\ud800", "output": "a()"}\n]')
    with pytest.raises(DatasetError, match=r":2: record 1: field 'instruction': contains a lone surrogate"):
        load_dataset(path)


def test_unlabelled_records_only_where_asked(tmp_path: Path) -> None:
    path = tmp_path / "raw.json"
    path.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b", "output": "b()"}]))
    assert [r.output for r in load_dataset(path, require_output=False)] == ["", "b()"]
    with pytest.raises(DatasetError, match="record 1: field 'output': missing"):
        load_dataset(path)
    path.write_text(json.dumps([{"instruction": "a", "output": "b(("}]))
    with pytest.raises(DatasetError, match="field 'output': '\\(' inside an argument list"):
        load_dataset(path, require_output=False)


def test_content_checks_are_left_to_the_linter_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "content.json"
    path.write_text(json.dumps([{"instruction": "", "output": "x(("}, {"instruction": "b", "output": ""}]))
    assert [(r.instruction, r.output) for r in load_dataset(path, check_outputs=False)] == [("", "x(("), ("b", "")]
    with pytest.raises(DatasetError, match="record 1: field 'instruction': empty"):
        load_dataset(path)
