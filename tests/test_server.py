"""The real server (`intentlm serve` subprocess, real vLLM) on the shared `live_server`: every route.

Tests here only send ordinary traffic; those that overload, time out or kill a server are in
test_server_lifecycle.py with servers of their own.
"""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from service.intents import parse
from service.modelcard import read_card

pytestmark = pytest.mark.engine

SMART_HOME = ["turn off the lights in the kitchen", "wake me up at seven tomorrow", "what's the weather like"]


@pytest.fixture(scope="module")
def client(live_server) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, headers={"Authorization": live_server.token}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def known(live_server) -> set[str]:
    return {*read_card(live_server.model_dir).intents, "oos"}


def metric(text: str, name: str, /, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
    return 0.0


def test_health_routes_are_open(live_server) -> None:
    assert httpx.get(f"{live_server.url}/health/live").json() == {"status": "live"}
    ready = httpx.get(f"{live_server.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_intents_single_reply_shape_and_grammar(client, known) -> None:
    reply = client.post("/v1/intents", json={"text": SMART_HOME[0]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"intents", "raw", "confidence", "ranking", "oos_reason", "typicality", "latency_ms"}
    assert 0.0 <= body["confidence"] <= 1.0 and 0.0 < body["typicality"] <= 1.0
    assert 0 < body["latency_ms"] < 60_000
    # Constrained decoding: whatever came back names only the model's intents and parses.
    assert all(call["name"] in known for call in body["intents"])
    if body["intents"]:
        assert [c.name for c in parse(";".join(f"{c['name']}({','.join(c['args'])})" for c in body["intents"]))]


def test_intents_batch_keeps_order_and_matches_singles(client) -> None:
    batch = client.post("/v1/intents", json={"texts": SMART_HOME})
    assert batch.status_code == 200, batch.text
    answers = batch.json()
    assert isinstance(answers, list) and len(answers) == len(SMART_HOME)
    singles = [client.post("/v1/intents", json={"text": text}).json() for text in SMART_HOME]
    # Greedy decoding: batched and one-by-one answers are the same.
    assert [a["raw"] for a in answers] == [s["raw"] for s in singles]


def test_intents_free_form_and_history(client) -> None:
    reply = client.post(
        "/v1/intents",
        json={
            "text": "and in the bedroom",
            "history": [["turn off the lights", "iot_hue_lightoff()"]],
            "constrained": False,
        },
    )
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["raw"], str)


def test_eas_stream_is_nul_delimited_full_text(client) -> None:
    with client.stream("POST", "/", json={"prompt": "hello", "max_new_tokens": 6, "use_stream_chat": True}) as reply:
        assert reply.status_code == 200
        raw = reply.read()
    assert raw.endswith(b"\0")
    updates = [json.loads(part) for part in raw.split(b"\0") if part]
    assert 1 <= len(updates) <= 6
    assert all(set(u) == {"response", "history"} for u in updates)
    texts = [u["response"] for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "hi", "top_k": 0}, "top_k"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "history": [["only one"]]}, "history.0"),
        ({"prompt": "hi", "history": [["a", "b"]] * 65}, "history"),
        ({"prompt": "x" * 16_001}, "prompt"),
        ({"prompt": "hello " * 2500}, "prompt"),  # fits the character bound, not the 2048-token context
    ],
)
def test_eas_invalid_fields_are_422_naming_the_field(client, body, field) -> None:
    reply = client.post("/", json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["field"] == field or error["field"].startswith(field + ".")
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "a", "texts": ["b"]}, "text"),
        ({"history": []}, "text"),
        ({"texts": []}, "texts"),
        ({"texts": ["a"] * 65}, "texts"),
        ({"text": "hi", "temperature": 1}, "temperature"),  # unknown fields are refused here
        ({"texts": ["fine", "hello " * 2500]}, "texts.1"),
    ],
)
def test_intents_invalid_fields_are_422_naming_the_field(client, body, field) -> None:
    reply = client.post("/v1/intents", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field


def test_auth_raw_bearer_missing_wrong(live_server) -> None:
    url = f"{live_server.url}/v1/intents"
    body = {"text": "lights off"}
    assert (
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {live_server.token}"}, timeout=60).status_code
        == 200
    )
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": "Bearer wrong"}):
        reply = httpx.post(url, json=body, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{live_server.url}/metrics").status_code == 200


def test_body_too_large_is_413_json(client) -> None:
    reply = client.post(
        "/", content=b'{"prompt": "' + b"a" * (2 << 20) + b'"}', headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_method_are_json(client) -> None:
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    reply = client.get("/v1/intents")
    assert reply.status_code == 405 and reply.json()["error"]["code"] == "method_not_allowed"


def test_metrics_cover_the_design_list(client, live_server) -> None:
    client.post("/v1/intents", json={"text": SMART_HOME[1]})
    client.post("/", json={"prompt": ""})
    text = httpx.get(f"{live_server.url}/metrics").text
    assert metric(text, "intentlm_requests_total", route="/v1/intents", status="200") >= 1
    assert metric(text, "intentlm_requests_total", route="/", status="422") >= 1
    assert metric(text, "intentlm_request_latency_seconds_count", route="/v1/intents") >= 1
    # drift: the answers' scores by the intent the model wrote (the test model has typicality statistics)
    assert re.search(r'^intentlm_intent_confidence_count\{intent="\w+",model="[\w.-]+"\} [1-9]', text, re.M)
    assert re.search(r'^intentlm_intent_typicality_count\{intent="\w+",model="[\w.-]+"\} [1-9]', text, re.M)
    # tokens and times are vLLM's own metrics, not counted twice
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count"):
        assert metric(text, name) >= 1, name
    assert "intentlm_prompt_tokens" not in text and "intentlm_time_to_first_token" not in text
    assert "intentlm_requests_in_flight " in text and "intentlm_requests_queued " in text
    assert "intentlm_malformed_outputs_total" in text or "intentlm_predicted_intents_total" in text
    assert metric(text, "intentlm_model_info", model=live_server.model_dir.name, adapter="false") == 1
    assert re.search(r"^vllm:num_requests_running\{", text, re.M)  # vLLM's own engine metrics
    # every request shares the system prompt's turn (over 32 tokens here): its KV blocks come from the prefix cache
    assert metric(text, "vllm:prefix_cache_hits_total") > 0


def test_sampling_is_served_beside_jump_forward(client) -> None:
    """The default server (jump-forward on) samples as asked; top_k 1 is greedy whatever the temperature (the reference
    client's default)."""
    assert (
        client.post("/", json={"prompt": "hi", "temperature": 0.95, "top_k": 1, "max_new_tokens": 2}).status_code == 200
    )
    assert (
        client.post("/", json={"prompt": "hi", "temperature": 0.9, "top_k": 40, "max_new_tokens": 2}).status_code == 200
    )


def _running(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "vllm:num_requests_running")


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_aborts_generation(live_server, stream) -> None:
    """A long generation stops in the engine as soon as its client goes away."""
    body = json.dumps(
        {
            "prompt": "Write a very long story about a dragon.",
            "max_new_tokens": 1500,
            "temperature": 0.7,
            "use_stream_chat": stream,
        }
    ).encode()
    address = urlparse(live_server.url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {live_server.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 20
        while _running(live_server.url) < 1:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.1)
    closed = time.monotonic()
    while _running(live_server.url) > 0:
        assert time.monotonic() - closed < 5, "the generation kept running after the client left"
        time.sleep(0.1)
