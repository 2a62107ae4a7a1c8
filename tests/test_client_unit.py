"""The client against mocked HTTP (respx, httpx.MockTransport): request bodies, error mapping, retries, stream
parsing, env vars, a caller's own httpx client, batches split to the server's limit.

The same client against a real server is in test_client_live.py.
"""

from __future__ import annotations

import asyncio
import builtins
import json

import httpx
import pytest
import respx
from click.testing import CliRunner

import clients
import intentlm
from clients import AsyncIntentClient, IntentClient, Retries
from clients.cli import ask
from clients.client import MAX_BATCH, _NulSplitter
from service.protocol import MAX_BATCH as SERVER_MAX_BATCH

URL = "http://intent.test"
PREDICTION = {
    "intents": [{"name": "iot_hue_lightoff", "args": []}, {"name": "alarm_set", "args": ["7 am", "monday"]}],
    "raw": "iot_hue_lightoff();alarm_set(7 am,monday)",
    "confidence": 0.93,
    "ranking": [{"name": "iot_hue_lightoff", "confidence": 0.93}, {"name": "iot_hue_lighton", "confidence": 0.05}],
    "oos_reason": None,
    "typicality": 0.61,
    "latency_ms": 12.5,
}
NO_WAIT = Retries(total=3, backoff=0.0)


def error(status: int, code: str, message: str = "m", field: str | None = None, **headers: str) -> httpx.Response:
    detail = {"code": code, "message": message} | ({"field": field} if field else {})
    return httpx.Response(status, json={"error": detail}, headers=headers)


def nul_stream(*texts: str, prompt: str = "p") -> bytes:
    return b"".join(json.dumps({"response": text, "history": [[prompt, text]]}).encode() + b"\0" for text in texts)


@respx.mock
def test_predict_sends_the_contract_body_and_returns_typed_intents() -> None:
    route = respx.post(f"{URL}/v1/intents").mock(return_value=httpx.Response(200, json=PREDICTION))
    with IntentClient(URL, token="secret") as client:
        prediction = client.predict("turn off the lights and wake me at 7", history=[("hi", "greet()")])
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "text": "turn off the lights and wake me at 7",
        "history": [["hi", "greet()"]],
    }
    assert request.headers["authorization"] == "secret"  # raw, as EAS clients send it
    assert [str(i) for i in prediction.intents] == ["iot_hue_lightoff()", "alarm_set(7 am,monday)"]
    assert str(prediction) == PREDICTION["raw"] and prediction.confidence == 0.93


@respx.mock
def test_predict_batch_keeps_order_and_shared_fields() -> None:
    replies = [dict(PREDICTION, raw=str(i)) for i in range(3)]
    route = respx.post(f"{URL}/v1/intents").mock(return_value=httpx.Response(200, json=replies))
    with IntentClient(URL) as client:
        predictions = client.predict_batch(["a", "b", "c"], system_prompt="S")
    assert json.loads(route.calls.last.request.content) == {"texts": ["a", "b", "c"], "system_prompt": "S"}
    assert [p.raw for p in predictions] == ["0", "1", "2"]
    assert "authorization" not in route.calls.last.request.headers


@respx.mock
def test_chat_sends_the_eas_body_under_a_base_path() -> None:
    """An EAS endpoint has a path: POST / is the base URL itself, other routes resolve below it."""
    base = f"{URL}/api/predict/intent_svc"
    route = respx.post(f"{base}/").mock(
        return_value=httpx.Response(200, json={"response": "ok()", "history": [["q", "ok()"]]})
    )
    with IntentClient(base) as client:
        response, history = client.chat("q", [], system_prompt="S", top_k=4, temperature=0.95, max_new_tokens=2048)
    assert json.loads(route.calls.last.request.content) == {
        "prompt": "q",
        "system_prompt": "S",
        "history": [],
        "top_k": 4,
        "temperature": 0.95,
        "max_new_tokens": 2048,
        "use_stream_chat": False,
    }
    assert (response, history) == ("ok()", [("q", "ok()")])


@pytest.mark.parametrize(
    ("reply", "error_type", "attributes"),
    [
        (error(401, "unauthorized"), clients.AuthError, {"status_code": 401, "code": "unauthorized"}),
        (error(404, "not_found"), clients.NotFoundError, {"status_code": 404}),
        (error(413, "too_large"), clients.PayloadTooLargeError, {"status_code": 413}),
        (
            error(422, "invalid", "bad top_p", field="top_p"),
            clients.ValidationError,
            {"field": "top_p", "message": "bad top_p"},
        ),
        (error(429, "busy", **{"Retry-After": "7"}), clients.OverloadedError, {"retry_after": 7.0}),
        (error(503, "not_ready"), clients.OverloadedError, {"retry_after": None}),
        (error(504, "timeout"), clients.IntentLMTimeoutError, {"status_code": 504}),
        (error(500, "internal"), clients.ServerError, {"code": "internal"}),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), clients.ServerError, {"code": "http_502"}),
        (httpx.Response(200, text="not json"), clients.ResponseError, {"code": "bad_response"}),
        (httpx.Response(200, json={"response": "x"}), clients.ResponseError, {"code": "bad_response"}),
    ],
)
@respx.mock
def test_error_replies_become_typed_errors(reply: httpx.Response, error_type: type, attributes: dict) -> None:
    respx.post(f"{URL}/v1/intents").mock(return_value=reply)
    with IntentClient(URL, retries=0) as client, pytest.raises(error_type) as raised:
        client.predict("x")
    assert isinstance(raised.value, clients.IntentLMError)
    for name, value in attributes.items():
        assert getattr(raised.value, name) == value


def test_builtin_names_catch_ours_and_none_is_shadowed() -> None:
    assert issubclass(clients.IntentLMTimeoutError, TimeoutError)
    assert issubclass(clients.IntentLMConnectionError, ConnectionError)
    assert not set(clients.__all__) & set(dir(builtins))  # `from intentlm import *` rebinds no built-in


def test_intentlm_exports_the_client() -> None:
    assert sorted(intentlm.__all__) == sorted(clients.__all__)
    assert all(getattr(intentlm, name) is getattr(clients, name) for name in clients.__all__)


@respx.mock
def test_retries_503_then_succeeds_and_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("clients.client.time.sleep", waits.append)
    route = respx.post(f"{URL}/v1/intents").mock(
        side_effect=[
            error(503, "not_ready", **{"Retry-After": "2"}),
            error(429, "busy"),
            httpx.Response(200, json=PREDICTION),
        ]
    )
    with IntentClient(URL, retries=Retries(total=3, backoff=0.1, max_wait=10)) as client:
        assert client.predict("x").raw == PREDICTION["raw"]
    assert route.call_count == 3
    assert waits[0] == 2.0 and 0.05 <= waits[1] <= 0.2  # Retry-After, then jittered back-off


@respx.mock
def test_retries_give_up_after_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clients.client.time.sleep", lambda _: None)
    route = respx.post(f"{URL}/v1/intents").mock(return_value=error(503, "not_ready", **{"Retry-After": "60"}))
    with IntentClient(URL, retries=Retries(total=2)) as client, pytest.raises(clients.OverloadedError) as raised:
        client.predict("x")
    assert route.call_count == 3 and raised.value.retry_after == 60


@respx.mock
def test_connect_errors_are_retried_but_read_timeouts_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clients.client.time.sleep", lambda _: None)
    route = respx.post(f"{URL}/v1/intents").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=PREDICTION)]
    )
    with IntentClient(URL, retries=NO_WAIT) as client:
        client.predict("x")
    assert route.call_count == 2

    # The request reached the server: it may still be generating, so a retry could run it twice.
    route = respx.post(f"{URL}/").mock(side_effect=httpx.ReadTimeout("slow"))
    with IntentClient(URL, retries=NO_WAIT) as client, pytest.raises(clients.IntentLMTimeoutError) as raised:
        client.chat("x")
    assert route.call_count == 1 and raised.value.status_code is None
    route.reset()
    route.mock(side_effect=httpx.RemoteProtocolError("closed"))
    with IntentClient(URL, retries=NO_WAIT) as client, pytest.raises(clients.IntentLMConnectionError):
        client.chat("x")
    assert route.call_count == 1


@respx.mock
def test_no_retries_when_off_and_no_retry_on_client_errors() -> None:
    route = respx.post(f"{URL}/v1/intents").mock(return_value=error(503, "not_ready"))
    with IntentClient(URL, retries=0) as client, pytest.raises(clients.OverloadedError):
        client.predict("x")
    assert route.call_count == 1
    route.reset()
    route.mock(return_value=error(422, "invalid", field="text"))
    with IntentClient(URL, retries=NO_WAIT) as client, pytest.raises(clients.ValidationError):
        client.predict("")
    assert route.call_count == 1


def test_nul_splitter_reassembles_objects_cut_anywhere() -> None:
    data = nul_stream("tu", "turn", "turn_off()")
    for size in (1, 3, 7, len(data)):
        splitter = _NulSplitter()
        parts = [p for i in range(0, len(data), size) for p in splitter.feed(data[i : i + size])] + splitter.close()
        assert [json.loads(p)["response"] for p in parts] == ["tu", "turn", "turn_off()"]
    splitter = _NulSplitter()  # the last object may come without a trailing NUL
    assert splitter.feed(b'{"a":1}\0{"a":2}') == [b'{"a":1}'] and splitter.close() == [b'{"a":2}']


@respx.mock
def test_stream_yields_growing_text_and_sends_use_stream_chat() -> None:
    route = respx.post(f"{URL}/").mock(return_value=httpx.Response(200, content=nul_stream("a", "ab", "abc")))
    with IntentClient(URL) as client:
        assert list(client.stream("p", top_p=0.5)) == ["a", "ab", "abc"]
    assert json.loads(route.calls.last.request.content)["use_stream_chat"] is True


@respx.mock
def test_stream_raises_an_error_object_sent_mid_stream() -> None:
    body = nul_stream("a") + json.dumps({"error": {"code": "timeout", "message": "too slow"}}).encode() + b"\0"
    respx.post(f"{URL}/").mock(return_value=httpx.Response(200, content=body))
    with IntentClient(URL) as client, pytest.raises(clients.IntentLMTimeoutError, match="too slow"):
        list(client.stream("p"))


@respx.mock
def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTLM_URL", "http://from-env:9000/")
    monkeypatch.setenv("INTENTLM_API_TOKEN", "env-token")
    route = respx.get("http://from-env:9000/health/ready").mock(return_value=httpx.Response(200, json={}))
    with IntentClient() as client:
        assert client.ready()
    assert route.calls.last.request.headers["authorization"] == "env-token"
    with IntentClient("http://explicit", token="arg") as client:  # arguments win
        assert client.base_url == "http://explicit" and client.token == "arg"
    monkeypatch.delenv("INTENTLM_URL")
    monkeypatch.delenv("INTENTLM_API_TOKEN")
    with IntentClient() as client:
        assert client.base_url == "http://127.0.0.1:8000" and client.token is None


@respx.mock
def test_async_twin_predicts_chats_streams_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("clients.client.asyncio.sleep", no_sleep)
    respx.post(f"{URL}/v1/intents").mock(side_effect=[error(503, "not_ready"), httpx.Response(200, json=PREDICTION)])
    respx.post(f"{URL}/").mock(
        side_effect=[
            httpx.Response(200, json={"response": "r", "history": [["p", "r"]]}),
            httpx.Response(200, content=nul_stream("x", "xy")),
            error(422, "invalid", field="temperature"),
        ]
    )

    async def scenario() -> None:
        async with AsyncIntentClient(URL, token="t") as client:
            assert (await client.predict("x")).raw == PREDICTION["raw"]
            assert await client.chat("p") == ("r", [("p", "r")])
            assert [text async for text in client.stream("p")] == ["x", "xy"]
            with pytest.raises(clients.ValidationError) as raised:
                await client.chat("p", temperature=9)
            assert raised.value.field == "temperature"

    asyncio.run(scenario())


# --- a caller's own httpx client, and batches split to the server's limit (httpx.MockTransport) ---


def labelling_server(requests: list[httpx.Request]) -> httpx.MockTransport:
    """A transport that records each request and answers every text of a batch with itself as ``raw``."""

    def reply(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/health/ready":
            return httpx.Response(200, json={})
        return httpx.Response(200, json=[dict(PREDICTION, raw=t) for t in json.loads(request.content)["texts"]])

    return httpx.MockTransport(reply)


def test_a_callers_http_client_is_used_as_configured_and_left_open() -> None:
    requests: list[httpx.Request] = []
    timeout = httpx.Timeout(3.0, connect=1.0)
    http = httpx.Client(
        transport=labelling_server(requests),
        base_url="http://elsewhere.test",
        headers={"User-Agent": "app/1.0", "X-Trace": "abc"},
        timeout=timeout,
    )
    with IntentClient(URL, token="secret", timeout=99, http_client=http) as client:
        assert client.ready()
        assert [p.raw for p in client.predict_batch(["a", "b"])] == ["a", "b"]
    for request in requests:
        assert str(request.url).startswith(URL)  # the full URL: the caller's base_url is left alone
        assert request.headers["user-agent"] == "app/1.0" and request.headers["x-trace"] == "abc"
        assert request.headers["authorization"] == "secret"  # per request
        assert request.extensions["timeout"] == timeout.as_dict()  # the caller's, not timeout=99
    assert not http.is_closed and http.timeout == timeout and http.base_url == "http://elsewhere.test"
    assert "authorization" not in http.headers  # nothing of ours was set on it
    http.close()


def test_an_async_callers_http_client_is_left_open_and_an_own_one_closed() -> None:
    requests: list[httpx.Request] = []

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=labelling_server(requests), headers={"X-Trace": "abc"}) as http:
            async with AsyncIntentClient(URL, http_client=http) as client:
                assert [p.raw for p in await client.predict_batch(["a"])] == ["a"]
            assert not http.is_closed and requests[-1].headers["x-trace"] == "abc"
        async with AsyncIntentClient(URL) as own:
            pass
        assert own._http.is_closed

    asyncio.run(scenario())


def test_the_clients_batch_limit_is_the_servers() -> None:
    assert MAX_BATCH == SERVER_MAX_BATCH


@pytest.mark.parametrize(
    ("count", "max_batch", "sizes"), [(150, MAX_BATCH, [64, 64, 22]), (5, 2, [2, 2, 1]), (0, 2, [])]
)
def test_predict_batch_splits_long_lists_and_keeps_their_order(count: int, max_batch: int, sizes: list[int]) -> None:
    texts = [f"utterance {i}" for i in range(count)]
    requests: list[httpx.Request] = []
    with httpx.Client(transport=labelling_server(requests)) as http:
        client = IntentClient(URL, max_batch=max_batch, http_client=http)
        predictions = client.predict_batch(texts, system_prompt="S")
    assert [p.raw for p in predictions] == texts
    bodies = [json.loads(request.content) for request in requests]
    assert [len(body["texts"]) for body in bodies] == sizes
    assert all(body["system_prompt"] == "S" for body in bodies)  # the shared fields go with every chunk


def test_async_predict_batch_splits_long_lists_and_keeps_their_order() -> None:
    texts = [f"utterance {i}" for i in range(5)]
    requests: list[httpx.Request] = []

    async def scenario() -> list[clients.Prediction]:
        async with httpx.AsyncClient(transport=labelling_server(requests)) as http:
            return await AsyncIntentClient(URL, max_batch=2, http_client=http).predict_batch(texts)

    assert [p.raw for p in asyncio.run(scenario())] == texts
    assert [len(json.loads(request.content)["texts"]) for request in requests] == [2, 2, 1]


def test_predict_batch_refuses_a_reply_of_the_wrong_length() -> None:
    """Chunks are joined by position, so one prediction too few would shift every later one."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=[PREDICTION]))
    with httpx.Client(transport=transport) as http, pytest.raises(clients.ResponseError, match="1 predictions for 2"):
        IntentClient(URL, http_client=http).predict_batch(["a", "b"])


def test_a_client_names_its_model_in_every_body() -> None:
    """On a server of several models, ``model`` goes into each request's body (and nothing when unset)."""
    requests: list[httpx.Request] = []
    with httpx.Client(transport=labelling_server(requests)) as http:
        IntentClient(URL, model="lights", http_client=http).predict_batch(["a"])
        IntentClient(URL, http_client=http).predict_batch(["a"])
    assert [json.loads(r.content).get("model") for r in requests] == ["lights", None]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        IntentClient(URL, max_batch=0)


# --- intentlm ask, in-process (the subprocess runs against a real server are in test_client_live.py) ---


@respx.mock
def test_ask_prints_one_intent_per_line_or_json() -> None:
    respx.post(f"{URL}/v1/intents").mock(return_value=httpx.Response(200, json=PREDICTION))
    result = CliRunner().invoke(ask, ["--url", URL, "turn", "off", "the", "lights"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["iot_hue_lightoff()", "alarm_set(7 am,monday)"]
    assert json.loads(respx.calls.last.request.content) == {"text": "turn off the lights"}
    result = CliRunner().invoke(ask, ["--url", URL, "--json", "x"])
    assert json.loads(result.output) == PREDICTION


@respx.mock
def test_ask_stdin_batches_into_json_lines() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["texts"]
        return httpx.Response(200, json=[dict(PREDICTION, raw=t) for t in texts])

    route = respx.post(f"{URL}/v1/intents").mock(side_effect=reply)
    lines = [f"utterance {i}" for i in range(5)]
    result = CliRunner().invoke(
        ask, ["--url", URL, "--batch-size", "2", "-"], input="\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:])
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["text"] for row in rows] == lines and [row["raw"] for row in rows] == lines
    assert [len(json.loads(c.request.content)["texts"]) for c in route.calls] == [2, 2, 1]


@respx.mock
def test_ask_prompt_uses_eas_chat_and_keeps_a_history_file(tmp_path) -> None:
    history_file = tmp_path / "conversation.json"
    route = respx.post(f"{URL}/").mock(
        side_effect=lambda request: httpx.Response(
            200, json={"response": "R", "history": [*json.loads(request.content)["history"], ["q", "R"]]}
        )
    )
    for _ in range(2):
        result = CliRunner().invoke(
            ask,
            [
                "--url",
                URL,
                "--token",
                "t",
                "--prompt",
                "q",
                "--top-k",
                "4",
                "--temperature",
                "0.95",
                "--history-file",
                str(history_file),
            ],
        )
        assert result.exit_code == 0, result.output
        assert result.output == "R\n"
    body = json.loads(route.calls.last.request.content)
    assert body["history"] == [["q", "R"]] and body["top_k"] == 4 and body["temperature"] == 0.95
    assert json.loads(history_file.read_text()) == [["q", "R"], ["q", "R"]]


@respx.mock
def test_ask_stream_prints_only_the_new_text() -> None:
    respx.post(f"{URL}/").mock(return_value=httpx.Response(200, content=nul_stream("He", "Hello", "Hello!")))
    result = CliRunner().invoke(ask, ["--url", URL, "--prompt", "hi", "--stream"])
    assert result.exit_code == 0 and result.output == "Hello!\n"


@respx.mock
def test_ask_reports_errors_with_a_hint_and_no_traceback() -> None:
    respx.post(f"{URL}/v1/intents").mock(return_value=error(401, "unauthorized", "bad token"))
    result = CliRunner().invoke(ask, ["--url", URL, "x"])
    assert result.exit_code == 1 and "INTENTLM_API_TOKEN" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to ask"),
        (["text", "--prompt", "p"], "not both"),
        (["text", "--top-k", "3"], "--top-k: only with --prompt"),
        (["text", "--stream"], "--stream: only with --prompt"),
        (["-", "--history-file", "h.json"], "standard-input mode"),
    ],
)
def test_ask_refuses_contradictory_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(ask, ["--url", URL, *args])
    assert result.exit_code == 2 and message in result.output


def test_ask_refuses_a_malformed_history_file(tmp_path) -> None:
    bad = tmp_path / "h.json"
    bad.write_text('[["only one"]]')
    result = CliRunner().invoke(ask, ["--url", URL, "--prompt", "p", "--history-file", str(bad)])
    assert result.exit_code == 2 and "h.json" in result.output and "pairs" in result.output


def test_clients_imports_nothing_of_ours_nor_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, clients, clients.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'service', 'training', 'eval', 'intentlm', 'torch', 'vllm', 'transformers', 'fastapi'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
