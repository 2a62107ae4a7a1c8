"""Faults on a server of its own (small admission limit, no token): overload answered quickly and
recovered from, slow and vanishing clients freeing their slots, the schema holding with auth off
(this server has no token), and last the engine killed under load (fast 503s, then the process exits 1 for its orchestrator).

Tests run in file order on one server; the engine kill comes last because it ends the server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import psutil
import pytest
from conftest import LiveServer, start_server
from test_hostile import run_schemathesis
from test_server import metric

pytestmark = pytest.mark.engine

MAX_IN_FLIGHT, MAX_QUEUED = 2, 2
# Greedy counting under a plain system prompt: the base model keeps going to the 64-token cap.
LONG = {
    "prompt": "Count from 1 to 1000, separated by commas.",
    "system_prompt": "You are a helpful assistant.",
    "max_new_tokens": 64,
}


@pytest.fixture(scope="module")
def server(smarthome_model, tmp_path_factory) -> LiveServer:
    started = start_server(
        smarthome_model,
        tmp_path_factory.mktemp("faults"),
        "--max-in-flight",
        str(MAX_IN_FLIGHT),
        "--max-queued",
        str(MAX_QUEUED),
        "--max-new-tokens-cap",
        "64",
        "--admission-deadline",
        "0",  # the count bound alone (the deadline has its test in test_admission.py)
        token=None,
    )
    yield started
    started.stop()


def gauges(server: LiveServer) -> float:
    """Admitted generations: in flight + queued (both 0 when every slot is free)."""
    text = httpx.get(f"{server.url}/metrics").text
    return metric(text, "intentlm_requests_in_flight") + metric(text, "intentlm_requests_queued")


def wait_until(condition, timeout: float, message: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, message
        time.sleep(0.05)
    return time.monotonic() - start


async def timed_post(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, float, httpx.Headers, bytes]:
    start = time.monotonic()
    reply = await client.post(path, json=body)
    return reply.status_code, time.monotonic() - start, reply.headers, reply.content


def test_overload_is_refused_quickly_and_the_server_recovers(server) -> None:
    """Three times the admission limit at once: the excess gets 503 + Retry-After in well under a second."""

    async def burst() -> tuple[list, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            flood = [timed_post(client, "/", LONG) for _ in range(3 * (MAX_IN_FLIGHT + MAX_QUEUED))]
            tasks = [asyncio.ensure_future(call) for call in flood]
            await asyncio.sleep(0.5)
            start = time.monotonic()
            live = await client.get("/health/live")  # the process answers while saturated
            live_s = time.monotonic() - start
            assert live.status_code == 200
            return await asyncio.gather(*tasks), live_s

    results, live_s = asyncio.run(burst())
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert len(refused) + len(served) == len(results), [r[0] for r in results]
    assert len(served) >= MAX_IN_FLIGHT + MAX_QUEUED and len(refused) >= len(results) // 2
    for status, seconds, headers, content in refused:
        assert json.loads(content)["error"]["code"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
    refusal_s = sorted(seconds for _, seconds, _, _ in refused)
    assert refusal_s[-1] < 1.0, f"503s took {refusal_s}"
    assert live_s < 1.0
    print(
        f"\n503 latency: median {refusal_s[len(refusal_s) // 2] * 1000:.0f} ms, max {refusal_s[-1] * 1000:.0f} ms; "
        f"served {len(served)}, refused {len(refused)}"
    )
    # Load dropped: every slot is free again and the next request is served.
    wait_until(lambda: gauges(server) == 0, 10, "slots still held after the burst")
    assert httpx.post(f"{server.url}/v1/intents", json={"text": "lights off"}, timeout=30).status_code == 200


def test_disconnect_mid_stream_frees_the_slot(server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/", json={**LONG, "use_stream_chat": True}) as reply:
            assert reply.status_code == 200
            chunks = reply.iter_raw()  # kept: dropping the iterator would close the stream already
            assert next(chunks)
            assert gauges(server) >= 1
        # the context closed the connection mid-stream
    wait_until(lambda: gauges(server) == 0, 5, "the abandoned stream kept its slot")


def test_slow_reader_and_stalled_sender_do_not_hold_slots(server) -> None:
    """A client reading its stream very slowly still finishes and frees its slot; one that sends half a
    body and stalls holds no generation slot at all (admission happens after the body is read)."""
    address = urlparse(server.url)
    body = json.dumps({"text": "lights off"}).encode()
    with socket.create_connection((address.hostname, address.port)) as stalled:
        stalled.sendall(
            b"POST /v1/intents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with client.stream("POST", "/", json={**LONG, "max_new_tokens": 16, "use_stream_chat": True}) as reply:
                parts = []
                for chunk in reply.iter_raw(64):
                    parts.append(chunk)
                    time.sleep(0.05)
            assert b"".join(parts).endswith(b"\0")
            assert gauges(server) == 0
            assert client.post("/v1/intents", json={"text": "play some jazz"}).status_code == 200
    wait_until(lambda: gauges(server) == 0, 5, "a slot leaked")


def test_schemathesis_with_auth_off(server) -> None:
    run_schemathesis(server.url, {}, max_examples=10)


def test_a_batch_that_can_never_fit_is_422_not_503(server) -> None:
    reply = httpx.post(f"{server.url}/v1/intents", json={"texts": ["a"] * (MAX_IN_FLIGHT + MAX_QUEUED + 1)})
    assert reply.status_code == 422 and reply.json()["error"] == {
        "code": "batch_too_large",
        "field": "texts",
        "message": reply.json()["error"]["message"],
    }


def engine_cores(server: LiveServer) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "EngineCore" in p.name() or any("EngineCore" in part for part in p.cmdline())]


def test_engine_killed_under_load_fails_fast_and_the_process_exits_1(server) -> None:
    cores = engine_cores(server)
    assert cores, "no EngineCore process found"
    outcomes: list[tuple[str, float]] = []

    def long_request(stream: bool) -> None:
        start = time.monotonic()
        try:
            with httpx.stream("POST", f"{server.url}/", json={**LONG, "use_stream_chat": stream}, timeout=60) as reply:
                reply.read()
                outcome = str(reply.status_code)
        except httpx.HTTPError as exc:  # a stream cut short after its 200 header
            outcome = type(exc).__name__
        outcomes.append((outcome, time.monotonic() - start))

    threads = [threading.Thread(target=long_request, args=(i % 2 == 0,)) for i in range(MAX_IN_FLIGHT + MAX_QUEUED)]
    for thread in threads:
        thread.start()
    wait_until(lambda: gauges(server) >= MAX_IN_FLIGHT, 20, "the load never started")
    killed = time.monotonic()
    for core in cores:
        core.kill()

    # In-flight requests end at once: 503 for plain ones, a cut stream for streams already answering 200.
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive(), "a request hung after the engine died"
    done_s = time.monotonic() - killed
    assert all(o in ("503", "200", "RemoteProtocolError", "ReadError") for o, _ in outcomes), outcomes
    assert sum(o == "503" for o, _ in outcomes) >= 1, outcomes

    # New requests and readiness: 503 while the server shuts down, then the port closes.
    try:
        ready = httpx.get(f"{server.url}/health/ready", timeout=5)
        assert ready.status_code == 503, ready.text
        new = httpx.post(f"{server.url}/v1/intents", json={"text": "lights off"}, timeout=5)
        assert new.status_code == 503, new.text
    except httpx.TransportError:
        pass  # already closed: as good for the orchestrator
    assert server.process.wait(30) == 1, server.log()[-3000:]
    exit_s = time.monotonic() - killed
    assert "the engine died" in server.log()
    print(
        f"\nengine killed: in-flight requests ended after {done_s:.1f} s, process exited 1 after {exit_s:.1f} s; "
        f"outcomes {outcomes}"
    )
