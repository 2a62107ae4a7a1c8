"""Servers of their own (never the shared one): readiness while loading, overload, timeout, token cap,
graceful drain on SIGTERM. (An engine that dies under load: tests/test_reliability_faults.py.)

Both servers start together at module set-up so their model loads overlap.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from conftest import LiveServer, start_server, wait_ready
from test_server import metric

pytestmark = pytest.mark.engine

LONG = {"prompt": "Write a very long story about a dragon.", "temperature": 0.7, "max_new_tokens": 1000}


@pytest.fixture(scope="module")
def servers(smarthome_model, tmp_path_factory) -> dict[str, LiveServer]:
    log_dir = tmp_path_factory.mktemp("lifecycle")
    started = {
        # One generation at a time, no queue, 3 s per request: easy to overload and to time out.
        "tight": start_server(
            smarthome_model, log_dir, "--max-in-flight", "1", "--max-queued", "0", "--request-timeout", "3", wait=False
        ),
        # Answers of at most 40 tokens: short, bounded requests for the cap and the drain; and a typicality
        # threshold, for the out-of-scope rule through the real engine.
        "short": start_server(
            smarthome_model, log_dir, "--max-new-tokens-cap", "40", "--typicality-threshold", "0.3", wait=False
        ),
    }
    yield started
    for server in started.values():
        server.stop()


def headers(server: LiveServer) -> dict[str, str]:
    return {"Authorization": server.token}


def running(server: LiveServer) -> float:
    return metric(httpx.get(f"{server.url}/metrics").text, "vllm:num_requests_running")


def wait_running(server: LiveServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while running(server) < 1:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.05)


def in_background(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def test_not_ready_while_loading_then_ready(servers) -> None:
    server = servers["tight"]
    deadline = time.monotonic() + 300  # a loaded 2-core CI machine imports vLLM slowly
    while True:  # the HTTP server answers before the model is loaded
        try:
            live = httpx.get(f"{server.url}/health/live")
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()[-3000:]
            time.sleep(0.2)
    assert live.status_code == 200
    ready = httpx.get(f"{server.url}/health/ready")
    api = httpx.post(f"{server.url}/v1/intents", json={"text": "hi"}, headers=headers(server))
    if ready.status_code == 503:  # still loading (it nearly always is: loading takes ~30 s)
        assert ready.json()["error"]["code"] == "not_ready" and ready.headers["Retry-After"]
    if api.status_code == 503:
        assert api.json()["error"]["code"] == "not_ready"
    wait_ready(server)
    assert (
        httpx.post(f"{server.url}/v1/intents", json={"text": "hi"}, headers=headers(server), timeout=30).status_code
        == 200
    )


def test_overload_is_503_at_once_and_timeout_is_504(servers) -> None:
    server = servers["tight"]
    wait_ready(server)
    thread, result = in_background(lambda: httpx.post(f"{server.url}/", json=LONG, headers=headers(server), timeout=60))
    wait_running(server)
    start = time.monotonic()
    refused = httpx.post(f"{server.url}/v1/intents", json={"text": "lights off"}, headers=headers(server))
    assert time.monotonic() - start < 3.0  # refused at once, not after the 30 s timeout
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    thread.join()
    timed_out = result[0]
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "timeout"
    deadline = time.monotonic() + 5  # the timed-out generation was aborted in the engine
    while running(server) > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "intentlm_requests_total", route="/v1/intents", status="503") >= 1
    assert metric(text, "intentlm_requests_total", route="/", status="504") >= 1


def test_atypical_requests_are_answered_out_of_scope(servers) -> None:
    """The second and third requests are far from the smart-home requests in the model's hidden states (the
    test model's statistics: base model, 10 records per intent; 0.95, 0.06 and 0.01 typicality when measured)."""
    server = servers["short"]
    wait_ready(server)
    replies = httpx.post(
        f"{server.url}/v1/intents",
        headers=headers(server),
        timeout=60,
        json={"texts": ["turn the lights off", "order a large pepperoni pizza with extra cheese", "what is your name"]},
    ).json()
    assert replies[0]["typicality"] > 0.6
    assert replies[0]["intents"][0]["name"] != "oos"
    assert replies[1]["typicality"] < 0.3 and replies[1]["intents"] == [{"name": "oos", "args": []}]
    assert replies[1]["raw"] != "oos()"  # what the model wrote is kept
    assert replies[2]["typicality"] < 0.1
    assert replies[2]["intents"] == [{"name": "oos", "args": []}]
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "intentlm_out_of_scope_replies_total", score="typicality") >= 1


def test_max_new_tokens_is_clamped_not_refused(servers) -> None:
    server = servers["short"]
    wait_ready(server)
    before = metric(httpx.get(f"{server.url}/metrics").text, "vllm:generation_tokens_total")
    reply = httpx.post(f"{server.url}/", json={**LONG, "max_new_tokens": 10**9}, headers=headers(server), timeout=60)
    assert reply.status_code == 200, reply.text
    after = metric(httpx.get(f"{server.url}/metrics").text, "vllm:generation_tokens_total")
    assert 1 <= after - before <= 40


def test_sigterm_drains_in_flight_requests(servers) -> None:
    server = servers["short"]
    wait_ready(server)
    thread, result = in_background(lambda: httpx.post(f"{server.url}/", json=LONG, headers=headers(server), timeout=60))
    wait_running(server)
    server.process.terminate()
    thread.join()
    reply = result[0]
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"]
    # uvicorn re-raises the SIGTERM it caught once the drain and the engine shutdown are done.
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
