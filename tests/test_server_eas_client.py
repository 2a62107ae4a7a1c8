"""The reference's own EAS client, unchanged but for host and token, against the real server.

`post_http_request` and `get_response` are copied verbatim from
../shared/reference/pai-llm-intent-recognition.txt ("Call a model service"); the streaming reader
`get_streaming_response` is the one of PAI's EAS LLM documentation that the reference's
`Iterable` import belongs to (it splits the stream on NUL bytes).
"""

from __future__ import annotations

import json
from typing import Iterable, List

import pytest
import requests

pytestmark = pytest.mark.engine


# ---------------------------------------------------------------- verbatim from the reference
def post_http_request(prompt: str,
                      system_prompt: str,
                      history: list,
                      host: str,
                      authorization: str,
                      max_new_tokens: int = 2048,
                      temperature: float = 0.95,
                      top_k: int = 1,
                      top_p: float = 0.8,
                      langchain: bool = False,
                      use_stream_chat: bool = False) -> requests.Response:
    headers = {
        "User-Agent": "Test Client",
        "Authorization": f"{authorization}"
    }
    pload = {
        "prompt": prompt,
        "system_prompt": system_prompt,
        "top_k": top_k,
        "top_p": top_p,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "use_stream_chat": use_stream_chat,
        "history": history
    }
    response = requests.post(host, headers=headers,
                             json=pload, stream=use_stream_chat)
    return response


def get_response(response: requests.Response) -> List[str]:
    data = json.loads(response.content)
    output = data["response"]
    history = data["history"]
    return output, history


def get_streaming_response(response: requests.Response) -> Iterable[List[str]]:
    for chunk in response.iter_lines(chunk_size=8192,
                                     decode_unicode=False,
                                     delimiter=b"\0"):
        if chunk:
            data = json.loads(chunk.decode("utf-8"))
            output = data["response"]
            history = data["history"]
            yield output, history
# ---------------------------------------------------------------------------------------------

SYSTEM_PROMPT = ("You are an intent recognition expert. You can recognize an intent based on user questions and "
                 "return the corresponding intent and parameters.")


def test_reference_client_non_streaming(live_server) -> None:
    # The reference's __main__ defaults: top_k 4, top_p 0.8, temperature 0.95, max_new_tokens 2048.
    response = post_http_request("turn off the kitchen lights", SYSTEM_PROMPT, [], live_server.url,
                                 live_server.token, 2048, 0.95, 4, 0.8)
    assert response.status_code == 200
    output, history = get_response(response)
    assert isinstance(output, str) and output
    assert history == [["turn off the kitchen lights", output]]


def test_reference_client_with_history_greedy_is_deterministic(live_server) -> None:
    history = [["I want to listen to music", "play_music()"]]
    first = get_response(post_http_request("play some jazz", SYSTEM_PROMPT, history, live_server.url,
                                           live_server.token, 16, 0.0))
    second = get_response(post_http_request("play some jazz", SYSTEM_PROMPT, history, live_server.url,
                                            live_server.token, 16, 0.0))
    assert first == second
    assert first[1] == [*history, ["play some jazz", first[0]]]


def test_reference_client_streaming(live_server) -> None:
    response = post_http_request("what's the weather tomorrow", SYSTEM_PROMPT, [], live_server.url,
                                 live_server.token, 12, 0.0, use_stream_chat=True)
    assert response.status_code == 200
    updates = list(get_streaming_response(response))
    assert len(updates) >= 2
    texts = [output for output, _ in updates]
    # Each update carries the full text so far: every one extends the previous.
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert updates[-1][1] == [["what's the weather tomorrow", texts[-1]]]
    # The stream's final text is what the same greedy request answers without streaming.
    whole, _ = get_response(post_http_request("what's the weather tomorrow", SYSTEM_PROMPT, [], live_server.url,
                                              live_server.token, 12, 0.0))
    assert texts[-1] == whole


def test_reference_client_with_wrong_token_gets_401_json(live_server) -> None:
    response = post_http_request("hello", SYSTEM_PROMPT, [], live_server.url, "wrong-token")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
