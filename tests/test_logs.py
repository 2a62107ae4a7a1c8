"""Request ids and log formats (service/logs.py): unit tests over the app with a fake engine, and one real server
logging JSON."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from conftest import REPO, start_server
from fastapi.testclient import TestClient
from test_service_routes import FakeEngine

from service.app import create_app
from service.cli import serve
from service.config import Settings
from service.logs import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    accepted_request_id,
    vllm_request_id,
)
from service.protocol import IntentPrediction

GENERATED = re.compile(r"[0-9a-f]{32}")


class TalkativeEngine(FakeEngine):
    """Logs a line while it predicts, as the engine does when something goes wrong in a request."""

    async def predict_many(self, texts: list[str], **kwargs: object) -> list[IntentPrediction]:
        logging.getLogger("intentlm.engine").warning("predicting %d", len(texts))
        if texts == ["crash"]:
            raise RuntimeError("boom")
        return await super().predict_many(texts, **kwargs)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    async def factory(settings: Settings, model_dirs: dict[str, Path]) -> TalkativeEngine:
        return TalkativeEngine(settings, model_dirs)

    app = create_app(Settings(api_token="secret"), {"m": tmp_path}, factory)
    with TestClient(app, headers={"Authorization": "secret"}, raise_server_exceptions=False) as c:
        yield c


def test_a_sane_request_id_is_echoed(client: TestClient) -> None:
    reply = client.post("/v1/intents", json={"text": "a"}, headers={"X-Request-ID": "client-42_a.b:c/d"})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "client-42_a.b:c/d"


def test_a_request_id_is_generated_when_absent(client: TestClient) -> None:
    ids = [client.get("/health/live").headers["x-request-id"] for _ in range(2)]
    assert all(GENERATED.fullmatch(i) for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize(
    "value", [b"", b"x" * 129, b"has space", b"tab\there", b"line\nfeed", b"bell\x07", b"\x1b[2J", b"caf\xc3\xa9"]
)
def test_an_insane_request_id_is_not_taken(value: bytes) -> None:
    assert accepted_request_id(value) is None


def test_an_insane_request_id_is_replaced(client: TestClient) -> None:
    for value in (b"x" * 129, b"caf\xc3\xa9", b"bell\x07"):
        assert GENERATED.fullmatch(client.get("/health/live", headers={"X-Request-ID": value}).headers["x-request-id"])
    assert accepted_request_id(b"x" * 128) == "x" * 128


def test_error_replies_and_streams_carry_the_id(client: TestClient) -> None:
    header = {"X-Request-ID": "err-1"}
    replies = [
        client.get("/nope", headers=header),
        client.post("/v1/intents", json={}, headers=header),  # 422
        client.post("/v1/intents", json={"text": "a"}, headers={**header, "Authorization": "wrong"}),  # 401
        client.post("/", json={"prompt": "hi", "use_stream_chat": True}, headers=header),
    ]
    assert [r.status_code for r in replies] == [404, 422, 401, 200]
    assert all(r.headers.get_list("x-request-id") == ["err-1"] for r in replies)


def test_the_log_records_of_a_request_carry_its_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.DEBUG, logger="intentlm")
    client.post("/v1/intents", json={"text": "a"}, headers={"X-Request-ID": "req-a"})
    client.post("/v1/intents", json={"text": "crash"}, headers={"X-Request-ID": "req-b"})
    logging.getLogger("intentlm.test").info("outside")
    lines = [(r.name, r.getMessage(), r.request_id) for r in caplog.records]
    crashed = client.post("/v1/intents", json={"text": "crash"}, headers={"X-Request-ID": "req-c"})
    assert crashed.status_code == 500 and crashed.headers.get_list("x-request-id") == ["req-c"]
    assert ("intentlm.engine", "predicting 1", "req-a") in lines
    assert any(n == "intentlm.requests" and m.startswith("POST /v1/intents 200 ") and i == "req-a" for n, m, i in lines)
    assert ("intentlm.engine", "predicting 1", "req-b") in lines
    # The 500 comes from Starlette's catch-all handler, outside the middleware: its line still names the request.
    assert ("intentlm.app", "unexpected error on /v1/intents", "req-b") in lines
    assert lines[-1] == ("intentlm.test", "outside", None)


def test_vllm_request_ids_name_the_request() -> None:
    assert GENERATED.fullmatch(vllm_request_id())
    token = REQUEST_ID.set("req-7")
    try:
        ids = {vllm_request_id() for _ in range(3)}
    finally:
        REQUEST_ID.reset(token)
    assert len(ids) == 3 and all(re.fullmatch(r"req-7-[0-9a-f]{8}", i) for i in ids)


def _record(request_id: str | None, exc_info: bool = False) -> logging.LogRecord:
    try:
        raise ValueError("bad")
    except ValueError:
        info = sys.exc_info() if exc_info else None
    record = logging.LogRecord("intentlm.app", logging.ERROR, __file__, 1, "failed: %s", ("x",), info)
    record.request_id = request_id
    return record


def test_json_lines_have_the_fields() -> None:
    entry = orjson.loads(JsonFormatter().format(_record("req-1", exc_info=True)))
    assert set(entry) == {"time", "level", "logger", "message", "request_id", "exc_info"}
    assert datetime.fromisoformat(entry["time"]).utcoffset() == UTC.utcoffset(None)
    assert (entry["level"], entry["logger"], entry["message"], entry["request_id"]) == (
        "ERROR",
        "intentlm.app",
        "failed: x",
        "req-1",
    )
    assert "ValueError: bad" in entry["exc_info"]
    outside = orjson.loads(JsonFormatter().format(_record(None)))
    assert "exc_info" not in outside and outside["request_id"] is None


def test_text_lines_show_the_id_or_a_dash() -> None:
    assert TextFormatter().format(_record("req-1")).endswith(" ERROR intentlm.app [req-1]: failed: x")
    assert TextFormatter().format(_record(None)).endswith(" ERROR intentlm.app [-]: failed: x")


def test_json_logging_covers_vllm_records_through_a_config_file(tmp_path: Path) -> None:
    """In a process of its own: configure_logging changes the root logger and the environment."""
    code = (
        "import json, logging, logging.config, os\n"
        "from service.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('intentlm.x').info('ours')\n"
        "path = os.environ['VLLM_LOGGING_CONFIG_PATH']\n"
        "print(path)\n"
        "logging.config.dictConfig(json.load(open(path)))  # what every vLLM process does with it\n"
        "logging.getLogger('vllm.x').info('theirs')\n"
        "logging.getLogger('vllm.x').debug('not at vLLM level')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    entries = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [(e["logger"], e["message"], e["request_id"]) for e in entries] == [
        ("intentlm.x", "ours", None),
        ("vllm.x", "theirs", None),
    ]
    assert not Path(done.stdout.strip()).exists()  # removed at exit


def test_serve_has_the_log_format_flag() -> None:
    help_text = CliRunner().invoke(serve, ["--help"]).output
    assert "--log-format [text|json]" in help_text and "INTENTLM_LOG_FORMAT" in help_text


@pytest.mark.engine
def test_a_json_logging_server_names_the_request_in_its_lines(smarthome_model: Path, tmp_path: Path) -> None:
    """A server of its own (the shared one logs text at info, which writes no line per request): at debug, the
    request's line carries the client's id, and every log record, uvicorn's and vLLM's engine core's included, is a
    JSON line."""
    server = start_server(smarthome_model, tmp_path, "--log-format", "json", "--log-level", "debug")
    try:
        headers = {"Authorization": server.token, "X-Request-ID": "live-req-1"}
        reply = httpx.post(f"{server.url}/v1/intents", json={"text": "lights off"}, headers=headers, timeout=60)
        assert reply.status_code == 200 and reply.headers["x-request-id"] == "live-req-1"
        assert GENERATED.fullmatch(httpx.get(f"{server.url}/nope").headers["x-request-id"])
    finally:
        server.stop()
    log = server.log()
    entries = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [e for e in entries if e["request_id"] == "live-req-1"]
    assert any(e["logger"] == "intentlm.requests" and e["message"].startswith("POST /v1/intents 200") for e in mine)
    loggers = {e["logger"].split(".")[0] for e in entries}
    assert {"intentlm", "uvicorn", "vllm"} <= loggers, loggers
    assert not re.search(r"pid=\d+\) (DEBUG|INFO|WARNING|ERROR) ", log), "a vLLM line in vLLM's own text format"
