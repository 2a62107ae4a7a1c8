"""The uncertain-traffic log (service/uncertain.py) on real files, and `intentlm data to-itag --from-log`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from service.intents import parse
from service.predictor import Answer
from service.uncertain import UncertainLog, read_log
from training.data.cli import data
from training.data.itag import PRELABEL_KEY


def answer(intents: str, confidence: float, rejection: str | None = None, raw: str | None = None) -> Answer:
    name = parse(raw or intents)[0].name
    return Answer(parse(intents), raw or intents, confidence, 0.4, rejection, False, [(name, confidence)])


def uncertain_log(path: Path, *, confidence: float = 0.5, max_bytes: int = 1 << 20) -> UncertainLog:
    return UncertainLog(path, confidence=confidence, max_bytes=max_bytes)


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_records_only_uncertain_answers_with_their_scores(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "uncertain.jsonl"
    log = uncertain_log(path)
    log.record(
        "lights off please", [], answer("iot_hue_lightoff()", 0.97), "smarthome"
    )  # sure and in scope: not recorded
    log.record("dim it", [["the lights", "iot_hue_lightdim()"]], answer("iot_hue_lightdim()", 0.3), "smarthome")
    log.record("what is love", [], answer("oos()", 0.8, "typicality", raw="play_music()"), "smarthome")
    log.close()
    first, second = lines(path)
    assert set(first) == {
        "time", "text", "history", "intents", "raw", "confidence", "typicality", "oos_reason", "ranking", "model",
    }  # fmt: skip
    assert first["text"] == "dim it" and first["history"] == [["the lights", "iot_hue_lightdim()"]]
    assert first["intents"] == "iot_hue_lightdim()" and first["oos_reason"] is None and first["confidence"] == 0.3
    assert first["ranking"] == [["iot_hue_lightdim", 0.3]] and first["model"] == "smarthome"
    assert "history" not in second and second["intents"] == "oos()" and second["raw"] == "play_music()"
    assert second["oos_reason"] == "typicality"
    assert path.stat().st_mode & 0o777 == 0o600  # users' words: the owner's only


def test_concurrent_appends_give_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "uncertain.jsonl"
    log = uncertain_log(path, max_bytes=1 << 30)
    long = "x" * 9000  # beyond PIPE_BUF: whole all the same

    async def tasks() -> None:
        async def one(i: int) -> None:
            await asyncio.sleep(0)
            log.record(f"task {i} {long}", [], answer("play_music()", 0.1), "smarthome")

        await asyncio.gather(*(one(i) for i in range(200)))

    def thread(t: int) -> None:
        for i in range(100):
            log.record(f"thread {t} {i} {long}", [], answer("play_music()", 0.2), "smarthome")

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    log.close()
    texts = [entry["text"] for entry in lines(path)]  # every line parses
    assert len(texts) == len(set(texts)) == 200 + 8 * 100


def test_the_cap_stops_appending_once_and_never_truncates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "uncertain.jsonl"
    old = b'{"text": "from before the restart"}\n'
    path.write_bytes(old)
    one = len(orjson.dumps({"time": "", "text": "a"})) + 200  # about a line's size
    log = uncertain_log(path, max_bytes=len(old) + 3 * one)
    with caplog.at_level(logging.WARNING, logger="intentlm.uncertain"):
        for i in range(20):
            log.record(f"utterance {i}", [], answer("play_music()", 0.1), "smarthome")
    log.close()
    content = path.read_bytes()
    assert content.startswith(old) and len(content) <= len(old) + 3 * one
    assert 1 <= len(content.splitlines()) - 1 < 20
    assert [r.getMessage() for r in caplog.records if "cap" in r.getMessage()] == [caplog.records[0].getMessage()]
    # a restarted server counts what is there: still full, and the old lines stay
    uncertain_log(path, max_bytes=len(old) + 3 * one).record("more", [], answer("play_music()", 0.1), "smarthome")
    assert path.read_bytes() == content


def write_log(path: Path, entries: list[tuple[str, str, float, str | None]]) -> Path:
    log = uncertain_log(path, confidence=1.0)
    for text, intents, confidence, reason in entries:
        log.record(text, [], answer(intents, confidence, reason), "smarthome")
    log.close()
    return path


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(data, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_to_itag_from_log_orders_most_uncertain_first_and_deduplicates(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "uncertain.jsonl",
        [
            ("play some jazz", "play_music(jazz)", 0.45, None),
            ("Turn the  lights OFF", "iot_hue_lightoff()", 0.4, None),
            ("what is the meaning of life", "oos()", 0.9, "typicality"),
            ("turn the lights off", "iot_hue_lightoff()", 0.2, None),  # the same, less sure: this one is kept
            ("tell me a joke", "oos()", 0.1, "confidence"),
            ("play some jazz", "play_music(jazz)", 0.45, None),
        ],
    )
    manifest = tmp_path / "tolabel.manifest"
    code, out = invoke("to-itag", "--from-log", log, "-o", manifest)
    assert code == 0, out
    assert "4 rows to label, 4 pre-labelled" in out
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert [(r["data"]["instruction"], r[PRELABEL_KEY]["results"][0]["data"]) for r in rows] == [
        ("tell me a joke", "oos()"),
        ("what is the meaning of life", "oos()"),
        ("turn the lights off", "iot_hue_lightoff()"),
        ("play some jazz", "play_music(jazz)"),
    ]
    assert rows[0][PRELABEL_KEY]["results"][0]["markTitle"] == "output"


def test_to_itag_from_log_folds_history_into_the_instruction(tmp_path: Path) -> None:
    log = tmp_path / "uncertain.jsonl"
    uncertain = uncertain_log(log)
    uncertain.record(
        "play jazz", [["I want to listen to music", "play_music()"]], answer("play_music(jazz)", 0.2), "smarthome"
    )
    uncertain.close()
    code, out = invoke("to-itag", "--from-log", log, "-o", tmp_path / "m.manifest")
    assert code == 0, out
    row = json.loads((tmp_path / "m.manifest").read_text(encoding="utf-8"))
    assert row["data"] == {"instruction": "I want to listen to music play jazz"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "uncertain.jsonl:2: invalid JSON"),
        (b'{"text": "x", "intents": "oos()"}', "uncertain.jsonl:2: field 'confidence': missing"),
        (b'{"text": 3, "intents": "oos()", "confidence": 0.1}', "uncertain.jsonl:2: field 'text': expected a string"),
        (b'{"text": "x", "intents": "oos(", "confidence": 0.1}', "uncertain.jsonl:2: field 'intents'"),
        (b'["a list"]', "uncertain.jsonl:2: expected a JSON object"),
    ],
)
def test_to_itag_from_log_names_the_bad_line(tmp_path: Path, line: bytes, message: str) -> None:
    log = write_log(tmp_path / "uncertain.jsonl", [("play some jazz", "play_music(jazz)", 0.45, None)])
    log.write_bytes(log.read_bytes() + line + b"\n")
    manifest = tmp_path / "m.manifest"
    code, out = invoke("to-itag", "--from-log", log, "-o", manifest)
    assert code == 1 and message in out, out
    assert not manifest.exists()
    with pytest.raises(Exception, match="line 2|:2:"):
        list(read_log(log))


def test_to_itag_takes_a_file_or_a_log(tmp_path: Path) -> None:
    log = write_log(tmp_path / "uncertain.jsonl", [("play some jazz", "play_music(jazz)", 0.45, None)])
    code, out = invoke("to-itag", "-o", tmp_path / "m.manifest")
    assert code == 2 and "either FILE or --from-log" in out
    code, out = invoke("to-itag", log, "--from-log", log, "-o", tmp_path / "m.manifest")
    assert code == 2 and "either FILE or --from-log" in out
    code, out = invoke("to-itag", "--from-log", log, "--model", tmp_path, "-o", tmp_path / "m.manifest")
    assert code == 2 and "--model does not apply" in out


def test_to_itag_from_a_log_of_several_models_takes_one(tmp_path: Path) -> None:
    log = tmp_path / "uncertain.jsonl"
    uncertain = uncertain_log(log)
    uncertain.record("dim it", [], answer("iot_hue_lightdim()", 0.3), "lights")
    uncertain.record("play jazz", [], answer("play_music(jazz)", 0.2), "music")
    uncertain.close()
    code, out = invoke("to-itag", "--from-log", log, "-o", tmp_path / "m.manifest")
    assert code == 2 and "several models (lights, music)" in out and not (tmp_path / "m.manifest").exists()
    code, out = invoke("to-itag", "--from-log", log, "--log-model", "music", "-o", tmp_path / "m.manifest")
    assert code == 0, out
    rows = [json.loads(line) for line in (tmp_path / "m.manifest").read_text(encoding="utf-8").splitlines()]
    assert [r["data"]["instruction"] for r in rows] == ["play jazz"]
    code, out = invoke("to-itag", "--from-log", log, "--log-model", "nope", "-o", tmp_path / "n.manifest")
    assert code == 2 and "no request of --log-model 'nope'" in out
