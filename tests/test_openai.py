"""The OpenAI-compatible routes through the real ``openai`` package against the shared live server.

The routes are vLLM's own serving layer over the server's engine (service.openai_serving); what is ours is tested
here: the token, the model list's intents, the opt-in intent grammar, OpenAI's error body for our refusals, and the
ranking ``/v1/intents`` now returns from the same decoding.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from service.intents import parse

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.token, max_retries=0)


@pytest.fixture(scope="module")
def served(live_server) -> str:
    return live_server.model_dir.name


def test_models_lists_the_served_model_with_its_intents(sdk, served, live_server) -> None:
    (model,) = sdk.models.list().data
    assert model.id == served
    extra = model.model_extra["intentlm"]
    assert "iot_hue_lightoff" in extra["intents"] and extra["out_of_scope_label"] == "oos"
    assert extra["max_batch"] >= 1


def test_chat_completion_with_the_intent_grammar_is_a_parseable_intent_call(sdk, served) -> None:
    reply = sdk.chat.completions.create(
        model=served,
        messages=[{"role": "user", "content": "turn off the lights in the kitchen"}],
        max_tokens=32,
        temperature=0,
        extra_body={"intents": True},
    )
    (calls,) = [parse(choice.message.content) for choice in reply.choices]
    intents = sdk.models.list().data[0].model_extra["intentlm"]["intents"]
    assert calls and all(call.name in intents for call in calls)
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completion_and_free_chat(sdk, served) -> None:
    completion = sdk.completions.create(model=served, prompt="The kitchen lights are", max_tokens=4, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 4
    constrained = sdk.completions.create(
        model=served, prompt="turn the lights off ->", max_tokens=32, temperature=0, extra_body={"intents": True}
    )
    assert parse(constrained.choices[0].text)
    chat = sdk.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("length", "stop")


def test_chat_streams_server_sent_events_with_usage(sdk, served) -> None:
    stream = sdk.chat.completions.create(
        model=served,
        messages=[{"role": "user", "content": "set an alarm for 7 am"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"intents": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert parse(text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_errors_are_openai_error_bodies(sdk, served, live_server) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in missing.value.message

    anonymous = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        anonymous.models.list()
    assert refused.value.body["type"] == "authentication_error" and refused.value.body["code"] == "unauthorized"

    with pytest.raises(openai.BadRequestError) as invalid:  # refused by vLLM's layer, rendered as vllm serve does
        sdk.chat.completions.create(model=served, messages=[{"role": "user", "content": "hi"}], max_tokens=-3)
    assert (
        set(invalid.value.body) == {"message", "type", "param", "code"} and invalid.value.body["param"] == "max_tokens"
    )

    with pytest.raises(openai.UnprocessableEntityError) as malformed:  # refused by the request model: ours
        sdk.chat.completions.create(model=served, messages="not a list")
    assert set(malformed.value.body) == {"message", "type", "param", "code"}
    assert malformed.value.body["type"] == "invalid_request_error" and malformed.value.body["param"] == "messages"

    # "n": null is the default of 1, streamed or not (schemathesis found a 500 here)
    for stream in (True, False):
        body = {"model": served, "messages": [{"role": "user", "content": "hi"}], "n": None, "max_tokens": 2}
        reply = httpx.post(
            f"{live_server.url}/v1/chat/completions",
            json=body | {"stream": stream},
            headers={"Authorization": live_server.token},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text

    # Our own routes keep their error body.
    reply = httpx.post(f"{live_server.url}/v1/intents", json={}, headers={"Authorization": live_server.token})
    assert set(reply.json()["error"]) >= {"code", "message"} and "type" not in reply.json()["error"]


def test_intents_replies_rank_the_allowed_intents(live_server) -> None:
    reply = httpx.post(
        f"{live_server.url}/v1/intents",
        json={"texts": ["turn off the lights in the kitchen", "what's the weather like tomorrow"]},
        headers={"Authorization": live_server.token},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    intents = httpx.get(f"{live_server.url}/v1/models", headers={"Authorization": live_server.token}).json()
    allowed = set(intents["data"][0]["intentlm"]["intents"])
    for answer in reply.json():
        ranking = answer["ranking"]
        assert ranking and ranking[0]["confidence"] >= answer["confidence"] - 1e-6  # the least sure call's
        assert [r["confidence"] for r in ranking] == sorted((r["confidence"] for r in ranking), reverse=True)
        assert sum(r["confidence"] for r in ranking) <= 1 + 1e-6
        assert {r["name"] for r in ranking} <= allowed and len({r["name"] for r in ranking}) == len(ranking)
        assert answer["oos_reason"] in (None, "confidence", "typicality")
        if answer["oos_reason"] is None:
            assert ranking[0]["name"] == answer["intents"][0]["name"]


def test_constrain_chat_reads_every_kind_of_message() -> None:
    """vLLM's message union holds typed dicts and, for some shapes, pydantic models (a harmony ``Message`` with an
    ``author``): both are read without error, the card's system prompt leads, the user's words bound the spans."""
    from service.modelcard import ModelCard
    from service.openai_serving import IntentChatRequest, constrain_chat
    from service.predictor import Predictor

    class Tokenizer:
        unk_token_id = 0

        def convert_tokens_to_ids(self, token: str) -> int:
            return 1

    card = ModelCard(system_prompt="Be brief.", intents=["iot_hue_lightoff"], args_from_text=True)
    predictor = Predictor(card, Tokenizer(), max_model_len=64)
    request = IntentChatRequest(
        model="m",
        messages=[{"author": {"role": "tool"}, "content": []}, {"role": "user", "content": "lights off"}],
        intents=True,
    )
    constrain_chat(request, predictor)
    assert request.messages[0] == {"role": "system", "content": "Be brief."}
    assert '"lights"' in request.structured_outputs.grammar
