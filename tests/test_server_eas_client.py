"""EAS compatibility of `POST /`: the server as PAI-EAS LLM clients call it, with our own small client.

What an EAS client does (PAI's "Call a model service"): it POSTs a JSON body with the fields
``prompt, system_prompt, history, top_k, top_p, temperature, max_new_tokens, use_stream_chat`` and
sends the service token *raw* in the ``Authorization`` header (no ``Bearer``). Without streaming
the reply is one JSON object ``{"response": text, "history": [[user, assistant], ...]}`` whose
history is the request's plus the new turn. With ``use_stream_chat`` it reads the body as a stream
of such objects, split on NUL bytes (``iter_lines(delimiter=b"\\0")`` in ``requests``), and each
object carries the whole text so far, not a delta.

The client below is deliberately small and written against that description, not against our
server's code, so a change that breaks EAS clients breaks these tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
import pytest

SYSTEM_PROMPT = (
    "You are an intent recognition expert. You can recognize an intent based on user questions and "
    "return the corresponding intent and parameters."
)
History = list[list[str]]


def nul_delimited(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The pieces of a byte stream between NUL bytes, whatever the network chunking.

    It behaves as the reader EAS clients use (``requests``' ``iter_lines(delimiter=b"\\0")``)
    is meant to: a piece may span chunks, a chunk may hold several pieces, empty pieces are
    skipped, and a last piece the stream ends without a NUL is still given.
    """
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\0")
        yield from (piece for piece in complete if piece)
    if pending:
        yield pending


@dataclass
class EasClient:
    """What an EAS client sends: the reference's request fields, and the token raw in ``Authorization``."""

    url: str
    token: str

    def request(self, prompt: str, history: History, *, stream: bool, **sampling: Any) -> dict[str, Any]:
        """httpx arguments for POST / with every field an EAS client sends; ``sampling`` overrides the
        reference client's function defaults (top_k 1, top_p 0.8, temperature 0.95, max_new_tokens 2048)."""
        body = {
            "prompt": prompt,
            "system_prompt": SYSTEM_PROMPT,
            "top_k": 1,
            "top_p": 0.8,
            "temperature": 0.95,
            "max_new_tokens": 2048,
            "use_stream_chat": stream,
            "history": history,
        } | sampling
        headers = {"User-Agent": "Test Client", "Authorization": self.token}
        return {"url": self.url, "json": body, "headers": headers, "timeout": 300}

    def post(self, prompt: str, history: History, **sampling: Any) -> httpx.Response:
        return httpx.post(**self.request(prompt, history, stream=False, **sampling))

    def chat(self, prompt: str, history: History, **sampling: Any) -> tuple[str, History]:
        """One non-streaming call: (response, history), after checking the reply is 200 JSON."""
        reply = self.post(prompt, history, **sampling)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        return data["response"], data["history"]

    def stream_chat(self, prompt: str, history: History, **sampling: Any) -> tuple[list[tuple[str, History]], bytes]:
        """A streaming call read as EAS clients read it: the (response, history) updates, and the raw body
        (kept to check the framing itself)."""
        raw: list[bytes] = []

        def recorded(chunks: Iterable[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                raw.append(chunk)
                yield chunk

        updates = []
        with httpx.stream("POST", **self.request(prompt, history, stream=True, **sampling)) as reply:
            assert reply.status_code == 200, reply.read()
            for piece in nul_delimited(recorded(reply.iter_bytes())):
                data = json.loads(piece.decode("utf-8"))
                updates.append((data["response"], data["history"]))
        return updates, b"".join(raw)


# ------------------------------------------------------------------------- the reader, no server
@pytest.mark.parametrize(
    "chunks",
    [
        [b'{"a":1}\0{"a":2}\0'],  # several pieces in one chunk
        [b'{"a"', b':1}\0{"a":', b"2}\0"],  # pieces across chunks
        [b'{"a":1}', b"\0", b'{"a":2}', b"\0"],  # the NUL in a chunk of its own
        [b'{"a":1}\0\0', b"", b'{"a":2}\0'],  # empty pieces and an empty chunk skipped
        [b'{"a":1}\0{"a":2}'],  # a last piece without its NUL still counts
    ],
)
def test_nul_reader_finds_the_same_pieces_whatever_the_chunking(chunks: list[bytes]) -> None:
    assert list(nul_delimited(chunks)) == [b'{"a":1}', b'{"a":2}']


# ------------------------------------------------------------------------------ the real server
@pytest.mark.engine
def test_non_streaming_reply_has_response_and_history(live_server) -> None:
    # The reference client's command-line defaults: top_k 4, top_p 0.8, temperature 0.95, max_new_tokens 2048.
    client = EasClient(live_server.url, live_server.token)
    output, history = client.chat(
        "turn off the kitchen lights", [], top_k=4, top_p=0.8, temperature=0.95, max_new_tokens=2048
    )
    assert isinstance(output, str) and output
    assert history == [["turn off the kitchen lights", output]]


@pytest.mark.engine
def test_history_is_extended_and_greedy_decoding_is_deterministic(live_server) -> None:
    client = EasClient(live_server.url, live_server.token)
    history = [["I want to listen to music", "play_music()"]]
    first = client.chat("play some jazz", history, max_new_tokens=16, temperature=0.0)
    second = client.chat("play some jazz", history, max_new_tokens=16, temperature=0.0)
    assert first == second
    assert first[1] == [*history, ["play some jazz", first[0]]]


@pytest.mark.engine
def test_stream_is_nul_terminated_json_with_the_full_text_so_far(live_server) -> None:
    client = EasClient(live_server.url, live_server.token)
    prompt = "what's the weather tomorrow"
    updates, raw = client.stream_chat(prompt, [], max_new_tokens=12, temperature=0.0)
    assert len(updates) >= 2
    # Every object is terminated by a NUL (not merely separated), and none is empty.
    assert raw.endswith(b"\0") and b"\0\0" not in raw and not raw.startswith(b"\0")
    texts = [output for output, _ in updates]
    # Each update carries the full text so far: every one extends the previous, and its history holds it.
    assert all(later.startswith(earlier) for earlier, later in pairwise(texts))
    assert all(history == [[prompt, text]] for text, history in updates)
    # The stream's final text is what the same greedy request answers without streaming.
    whole, _ = client.chat(prompt, [], max_new_tokens=12, temperature=0.0)
    assert texts[-1] == whole


@pytest.mark.engine
def test_wrong_or_missing_token_gets_401_json(live_server) -> None:
    wrong = EasClient(live_server.url, "wrong-token").post("hello", [])
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    missing = httpx.post(live_server.url, json={"prompt": "hello"}, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
