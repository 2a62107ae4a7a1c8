"""The strategy linter on the real training data and on crafted bad files, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TRAIN_FILE

from training.data.cli import data

INTENTLM = Path(sys.executable).parent / "intentlm"


def check(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(data, ["check", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def test_the_smarthome_training_data_follows_the_strategy() -> None:
    code, out = check(TRAIN_FILE, "--json", "--no-tokens")
    assert code == 0, out
    report = json.loads(out)
    assert report["records"] == 1152
    assert len(report["single_intent"]) == 12
    assert set(report["single_intent"].values()) == {80}
    assert report["multi_intent_records"] == 192
    assert report["multi_intent_share"] == pytest.approx(0.2)
    assert report["balance_ratio"] == 1.0
    assert report["errors"] == 0 and report["warnings"] == 0


def test_token_lengths_with_the_base_models_tokenizer(base_model: Path) -> None:
    code, out = check(TRAIN_FILE, "--model", base_model, "--seq_length", "32")
    assert code == 0, out  # too long records are a warning
    assert "tokens (prompt + answer, SmolLM2-135M-Instruct): min 26, p50 35, p95 57, max 73" in out
    assert (
        "records are longer than seq_length 32 (longest 73 tokens) and would be left out of training;"
        " use seq_length 128" in out
    )
    code, out = check(TRAIN_FILE, "--model", base_model, "--json")
    tokens = json.loads(out)["tokens"]
    assert tokens["over_seq_length"] == 0 and tokens["seq_length"] == 128
    assert tokens["recommended_seq_length"] == 128


def test_a_bad_file_fails_with_every_problem_and_its_record(tmp_path: Path) -> None:
    records = [{"instruction": f"turn the lights off {i}", "output": "iot_hue_lightoff()"} for i in range(60)]
    records += [{"instruction": f"play song {i}", "output": f"play_music(song {i})"} for i in range(20)]
    records += [
        {"instruction": "lights off and play jazz", "output": "iot_hue_lightoff();play_music(jazz)"},
        {"instruction": "wake me at 7 and lights off", "output": "alarm_set(7);iot_hue_lightoff()"},
        {"instruction": "weird", "output": "play_music(("},  # record 83: malformed
        {"instruction": "weirder", "output": "no parens"},  # record 84: malformed
        {"instruction": " ", "output": "play_music()"},  # record 85: empty instruction
        {"instruction": "Turn the lights  OFF 3", "output": "play_music()"},  # record 86: conflicts with 4
        {"instruction": "play song 1", "output": "play_music (song 1)"},  # record 87: duplicate of 62
    ]
    path = write(tmp_path / "bad.json", records)
    code, out = check(path, "--no-tokens")
    assert code == 1, out
    # indent=2: record n starts on line 4n - 2
    assert "error    output: '(' inside an argument list at column 12 of 'play_music(('" in out
    assert "record 83 (line 330)" in out and "record 84 (line 334)" in out
    assert "1 record with an empty 'instruction'" in out and "record 85 (line 338)" in out
    assert (
        "'turn the lights off 3' is labelled differently: 'iot_hue_lightoff()' (record 4); 'play_music()' (record 86)"
    ) in out
    assert "records 4 (line 14), 86 (line 342)" in out
    assert "intents used in multi-intent records but never alone: alarm_set" in out
    assert "'play song 1' → 'play_music(song 1)' occurs 2 times" in out
    assert "fewer than 50 single-intent records: play_music (23)" in out
    assert "unbalanced intents: iot_hue_lightoff has 60 single-intent records, play_music 23" in out
    assert "multi-intent records are 2% of the single-intent count" in out
    assert "outputs not in canonical form: 1 (e.g. 'play_music (song 1)' → 'play_music(song 1)')" in out
    assert out.rstrip().endswith("5 errors, 5 warnings")

    report = json.loads(check(path, "--json", "--no-tokens")[1])
    malformed = [i for i in report["issues"] if i["code"] == "malformed-output"]
    assert [i["records"] for i in malformed] == [[{"record": 83, "line": 330}], [{"record": 84, "line": 334}]]
    assert {i["code"] for i in report["issues"] if i["severity"] == "error"} == {
        "malformed-output",
        "empty-field",
        "conflicting-outputs",
        "intent-never-alone",
    }


def test_a_single_intent_dataset_only_gets_an_info_about_multi_intents(tmp_path: Path) -> None:
    path = write(tmp_path / "single.json", [{"instruction": f"u{i}", "output": f"i{i % 2}()"} for i in range(120)])
    code, out = check(path, "--no-tokens")
    assert code == 0 and "info     no multi-intent records" in out and "0 errors, 0 warnings" in out


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"{not json", "the top level is an object"),
        (b'[{"instruction": "a", "output": "b()"}, oops]', ":1: invalid JSON"),
        (b'{"instruction": "a", "output": "b()"}', "the top level is an object; a dataset is a JSON array"),
        (b'[\n{"instruction": "a"}\n]', ":2: record 1: field 'output': missing"),
        (
            b'[\n{"instruction": "a", "output": "b()"},\n{"instruction": 3, "output": "b()"}\n]',
            ":3: record 2: field 'instruction': expected a string, found a number",
        ),
        (b'[\n{"instruction": "caf\xe9", "output": "b()"}\n]', ":2: not valid UTF-8"),
        (b"[" * 100000, "nested too deeply"),
    ],
)
def test_unreadable_files_give_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    code, out = check(path, "--no-tokens")
    assert code == 1
    assert out.startswith(f"Error: {path}") and message in out, out


def test_exit_codes_through_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [INTENTLM, "data", "check", TRAIN_FILE, "--no-tokens"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "multi-intent records: 192 = 20.0% of single-intent records" in done.stdout
    path = write(tmp_path / "bad.json", [{"instruction": "x", "output": "x("}])
    done = subprocess.run([INTENTLM, "data", "check", path, "--no-tokens"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "record 1 (line 2)" in done.stdout
    done = subprocess.run([INTENTLM, "data", "check", tmp_path / "missing.json"], capture_output=True, text=True)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_an_empty_array_is_an_error(tmp_path: Path) -> None:
    code, out = check(write(tmp_path / "empty.json", []), "--no-tokens")
    assert code == 1 and "the dataset has no records" in out
