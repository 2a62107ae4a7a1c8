"""intentlm eval without an engine: --url against a mocked service, and every bad-input error.

The real --url run against a live server and the real --model run are in test_eval_engine.py.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import httpx
import pytest
import respx
from click.testing import CliRunner
from conftest import TEST_FILE

from eval.cli import eval_command
from eval.runner import RunnerError, model_card, predict_with_url

URL = "http://intentlm.test"
RECORDS = json.loads(TEST_FILE.read_text())[:6]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.json"
    path.write_text(json.dumps(RECORDS))
    return path


def _intents_reply(request: httpx.Request) -> httpx.Response:
    """Answers the gold output for the first records and a wrong intent after that."""
    text = json.loads(request.content)["text"]
    index = next(i for i, r in enumerate(RECORDS) if r["instruction"] == text)
    name, _, rest = RECORDS[index]["output"].partition("(")
    args = [a for a in rest.rstrip(")").split(",") if a]
    if index >= 4:
        name = "iot_cleaning" if name != "iot_cleaning" else "play_music"
    return httpx.Response(
        200,
        json={
            "intents": [{"name": name, "args": args}],
            "raw": f"{name}({','.join(args)})",
            "confidence": 0.9,
            "latency_ms": 5.0,
        },
    )


@respx.mock
def test_url_intents_api(data_file: Path, tmp_path: Path) -> None:
    route = respx.post(f"{URL}/v1/intents").mock(side_effect=_intents_reply)
    result = CliRunner().invoke(
        eval_command, ["--url", URL, "--data", str(data_file), "--token", "s3cret", "--report", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert route.call_count == len(RECORDS)
    assert route.calls[0].request.headers["Authorization"] == "s3cret"
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["mode"] == "url (intents)"
    assert metrics["metrics"]["reference"] == {"intent_accuracy": 4 / 6, "parameter_accuracy": 4 / 6}
    assert metrics["metrics"]["latency"]["max_ms"] > 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in RECORDS]  # order kept


@respx.mock
def test_url_run_waits_out_refusals_past_the_clients_own_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server past its admission deadline refuses (503, Retry-After); a batch evaluation comes back when told
    until the record is answered, beyond the client's three retries, and loses no record."""
    import asyncio

    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))  # no real waiting in a unit test
    refusals = iter(range(6))

    def reply(request: httpx.Request) -> httpx.Response:
        if next(refusals, None) is not None:
            return httpx.Response(
                503, json={"error": {"code": "overloaded", "message": "later"}}, headers={"Retry-After": "1"}
            )
        return _intents_reply(request)

    respx.post(f"{URL}/v1/intents").mock(side_effect=reply)
    predictions = predict_with_url(URL, [RECORDS[0]["instruction"]], concurrency=1, progress=False)
    assert [p.raw for p in predictions] == [RECORDS[0]["output"]]


@respx.mock
def test_url_eas_api_is_greedy_and_scores_the_response_text() -> None:
    route = respx.post(f"{URL}/").mock(
        return_value=httpx.Response(
            200, json={"response": "play_music (jazz)", "history": [["q", "play_music (jazz)"]]}
        )
    )
    predictions = predict_with_url(URL, ["find jazz"], api="eas", progress=False)
    body = json.loads(route.calls[0].request.content)
    assert body["prompt"] == "find jazz" and body["temperature"] == 0 and body["max_new_tokens"] == 64
    assert predictions[0].text == "play_music (jazz)"


@respx.mock
def test_url_401_is_a_clear_error(data_file: Path) -> None:
    respx.post(f"{URL}/v1/intents").mock(
        return_value=httpx.Response(401, json={"error": {"code": "unauthorized", "message": "missing or wrong token"}})
    )
    result = CliRunner().invoke(eval_command, ["--url", URL, "--data", str(data_file)])
    assert result.exit_code == 1
    assert "401" in result.output and "--token" in result.output and "Traceback" not in result.output


def test_unreachable_url_is_a_clear_error(data_file: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(eval_command, ["--url", f"http://127.0.0.1:{port}", "--data", str(data_file)])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output and "connect" in result.output.lower()
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_data_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"instruction": "x", "output": "play_music(jazz"}\n]\n')
    result = CliRunner().invoke(eval_command, ["--url", URL, "--data", str(bad)])
    assert result.exit_code == 1 and f"{bad}:2" in result.output and "output" in result.output


def test_usage_errors(data_file: Path) -> None:
    assert CliRunner().invoke(eval_command, ["--data", str(data_file)]).exit_code == 2
    assert CliRunner().invoke(eval_command, ["--url", URL]).exit_code == 2
    both = CliRunner().invoke(eval_command, ["--url", URL, "--model", ".", "--data", str(data_file)])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_model_dir_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RunnerError, match="no config.json"):
        model_card(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="intentlm.eval"):
        card = model_card(tmp_path)
    assert card.intents == [] and "no intentlm.json" in caplog.text
