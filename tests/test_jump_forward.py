"""Jump-forward decoding (service/vllm_forced.py) through the real engine: the demo model's answers to the whole
test file are plain greedy decoding's, token for token, with the same confidence and typicality.

In float32: in bf16 the step that verifies several proposed tokens at once rounds differently from single-token
steps, which flipped one near-tied argument of 480 answers (`iot_cleaning(dust)` at 0.64 against `iot_cleaning()`
at 0.69), the same kind of difference as batching requests differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TEST_FILE

from eval.runner import predict_with_model
from service.config import EngineSettings

pytestmark = pytest.mark.engine


def test_forced_tokens_proposed_to_vllm_leave_greedy_answers_unchanged(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTENTLM_JUMP_FORWARD", "on")
    assert EngineSettings().engine_args(demo_model)["speculative_config"]["method"] == "custom_class"
    texts = [r["instruction"] for r in json.loads(TEST_FILE.read_text())]
    jumped = predict_with_model(demo_model, texts, progress=False, dtype="float32")
    monkeypatch.setenv("INTENTLM_JUMP_FORWARD", "off")
    assert "speculative_config" not in EngineSettings().engine_args(demo_model)
    plain = predict_with_model(demo_model, texts, progress=False, dtype="float32")
    assert [p.raw for p in jumped] == [p.raw for p in plain]
    assert [p.confidence for p in jumped] == pytest.approx([p.confidence for p in plain], abs=1e-4)
    assert [p.typicality for p in jumped] == pytest.approx([p.typicality for p in plain], abs=1e-4)
