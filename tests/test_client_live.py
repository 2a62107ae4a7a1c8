"""The client and ``intentlm ask`` against the session's real server (``live_server``: vLLM, HTTP, token).

Generation is kept short (a few tokens for free-form chat) so the module costs seconds, not minutes,
on top of the shared server's start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

import clients
from clients import AsyncIntentClient, IntentClient
from tests.conftest import REPO, LiveServer

pytestmark = pytest.mark.engine

INTENTLM = str(REPO / ".venv" / "bin" / "intentlm")
UTTERANCES = ["turn the lights off", "wake me up at seven tomorrow", "what is the weather like"]


def known_intents(server: LiveServer) -> set[str]:
    return set(json.loads((server.model_dir / "intentlm.json").read_text())["intents"])


def ask(
    server: LiveServer, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INTENTLM, "ask", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_sync_client_predicts_chats_and_streams(live_server: LiveServer) -> None:
    intents = known_intents(live_server)
    with IntentClient(live_server.url + "/", token=live_server.token) as client:
        assert client.ready()
        prediction = client.predict(UTTERANCES[0])
        # Constrained decoding: the reply always parses and names only the model's intents.
        assert prediction.intents and {i.name for i in prediction.intents} <= intents
        assert str(prediction) == prediction.raw and 0.0 <= prediction.confidence <= 1.0 and prediction.latency_ms > 0

        batch = client.predict_batch(UTTERANCES)
        assert len(batch) == len(UTTERANCES) and batch[0].raw == prediction.raw  # greedy: same answer
        assert all({i.name for i in p.intents} <= intents for p in batch)

        response, history = client.chat("How can I get there?", [("hi", "hello")], max_new_tokens=8)
        assert history == [("hi", "hello"), ("How can I get there?", response)]
        texts = list(client.stream("How can I get there?", [("hi", "hello")], max_new_tokens=8))
        assert texts and texts[-1] == response, "the stream ends on the text chat returns (greedy)"
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:])), (
            "each update extends the last"
        )


def test_sync_client_raises_typed_errors_from_the_real_server(live_server: LiveServer) -> None:
    with IntentClient(live_server.url, token="wrong") as client, pytest.raises(clients.AuthError) as raised:
        client.predict("x")
    assert raised.value.status_code == 401
    with IntentClient(live_server.url, token=live_server.token) as client:
        with pytest.raises(clients.ValidationError) as raised:
            client.chat("hi", top_p=5)
        assert raised.value.field == "top_p"
        with pytest.raises(clients.ValidationError) as raised:
            client.predict("")
        assert raised.value.field == "text"


def test_async_client_serves_concurrent_requests(live_server: LiveServer) -> None:
    intents = known_intents(live_server)

    async def scenario() -> None:
        async with AsyncIntentClient(live_server.url, token=live_server.token) as client:
            assert await client.ready()
            predictions, batch, (response, _) = await asyncio.gather(
                asyncio.gather(*(client.predict(text) for text in UTTERANCES)),
                client.predict_batch(UTTERANCES),
                client.chat("hello", max_new_tokens=4),
            )
            # Continuous batching does not change greedy answers.
            assert [p.raw for p in predictions] == [p.raw for p in batch]
            assert all({i.name for i in p.intents} <= intents for p in predictions)
            texts = [text async for text in client.stream("hello", max_new_tokens=4)]
            assert texts[-1] == response

    asyncio.run(scenario())


def test_ask_prints_intents_json_and_chat(live_server: LiveServer) -> None:
    intents = known_intents(live_server)
    result = ask(live_server, "--url", live_server.url, "--token", live_server.token, UTTERANCES[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.split("(")[0] in intents and line.endswith(")") for line in lines)

    # URL and token from the environment; --json prints the whole reply.
    env = {"INTENTLM_URL": live_server.url, "INTENTLM_API_TOKEN": live_server.token}
    result = ask(live_server, "--json", UTTERANCES[0], env=env)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert [f"{i['name']}({','.join(i['args'])})" for i in reply["intents"]] == lines

    result = ask(live_server, "--prompt", "How can I get there?", "--max-new-tokens", "6", "--stream", env=env)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_ask_reads_standard_input_in_batches(live_server: LiveServer) -> None:
    lines = UTTERANCES + ["turn the lights on", "set an alarm for 6 am"]
    result = ask(
        live_server,
        "--url",
        live_server.url,
        "--token",
        live_server.token,
        "--batch-size",
        "2",
        "-",
        stdin="\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == lines
    assert all({"intents", "raw", "confidence", "latency_ms"} <= set(row) for row in rows)


def test_ask_fails_cleanly_on_a_wrong_token(live_server: LiveServer) -> None:
    result = ask(live_server, "--url", live_server.url, "--token", "wrong", UTTERANCES[0])
    assert result.returncode == 1
    assert "401" in result.stderr and "INTENTLM_API_TOKEN" in result.stderr and "Traceback" not in result.stderr
