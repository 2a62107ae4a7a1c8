"""Adapter directories (a LoRA adapter with its own card and statistics, named by its base) served where a merged
model directory is: the bundled ``training/demo`` through ``intentlm eval``'s engine and through a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from conftest import REPO, TRAIN_FILE, start_server

from service.config import Settings
from service.intents import parse
from service.modelcard import ModelCardError, intentlm_home, is_adapter_dir, weights_dir

DEMO_ADAPTER = REPO / "training" / "demo"


def test_an_adapter_names_its_base_by_path_or_prepared_name(base_model: Path, tmp_path: Path) -> None:
    assert is_adapter_dir(DEMO_ADAPTER) and not is_adapter_dir(base_model)
    assert weights_dir(base_model) == base_model
    assert (
        weights_dir(DEMO_ADAPTER)
        == intentlm_home()
        / "models"
        / json.loads((DEMO_ADAPTER / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    moved = shutil.copytree(DEMO_ADAPTER, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base_model)}))
    assert weights_dir(moved) == base_model
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "nowhere"}))
    (moved / "intentlm.json").write_text(
        json.dumps({**json.loads((moved / "intentlm.json").read_text()), "base_model": "nowhere either"})
    )
    with pytest.raises(ModelCardError, match="'nowhere'"):
        weights_dir(moved)
    assert Settings(model=[str(DEMO_ADAPTER)]).resolve_models() == {"demo": DEMO_ADAPTER}
    assert Settings().lora_engine_args([DEMO_ADAPTER])["max_lora_rank"] >= config["r"]


@pytest.mark.engine
def test_eval_answers_an_adapter_as_its_merged_model(base_model: Path, demo_model: Path) -> None:
    """Served as an adapter over its base (vLLM's LoRA) or merged (``intentlm model prepare``): the same answers, in
    float32; the scores agree to 0.01 (the merged weights are stored in the base's bf16: measured within 0.002)."""
    from eval.runner import predict_with_model

    texts = [record["instruction"] for record in json.loads(TRAIN_FILE.read_text())[:24]]
    merged = predict_with_model(demo_model, texts, progress=False, dtype="float32")
    adapter = predict_with_model(DEMO_ADAPTER, texts, progress=False, dtype="float32")
    assert [p.text for p in adapter] == [p.text for p in merged]
    assert all(abs(a.confidence - m.confidence) < 0.01 for a, m in zip(adapter, merged))
    assert all(a.typicality is not None and abs(a.typicality - m.typicality) < 0.01 for a, m in zip(adapter, merged))


@pytest.mark.engine
def test_a_server_serves_an_adapter_directory(base_model: Path, tmp_path: Path) -> None:
    server = start_server(DEMO_ADAPTER, tmp_path)
    try:
        headers = {"Authorization": server.token}
        reply = httpx.post(
            f"{server.url}/v1/intents", json={"text": "turn off the lights"}, headers=headers, timeout=60
        ).json()
        assert reply["intents"] == [{"name": "iot_hue_lightoff", "args": []}] and reply["typicality"] > 0.5
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
        listed = {model.id: model for model in sdk.models.list().data}
        assert "intentlm" in listed["demo"].model_extra  # the adapter, listed beside its base
        chat = sdk.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "wake me up at 7 am"}],
            temperature=0,
            max_tokens=24,
            extra_body={"intents": True},
        )
        assert [call.name for call in parse(chat.choices[0].message.content)] == ["alarm_set"]
    finally:
        server.stop()


def test_model_merge_turns_an_adapter_into_a_model_directory(base_model: Path, tmp_path: Path) -> None:
    import subprocess

    from service.modelcard import is_model_dir, read_card

    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "intentlm"), "model", "merge", "--model", DEMO_ADAPTER, "-o", tmp_path / "m"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    merged = tmp_path / "m"
    assert is_model_dir(merged) and (merged / "typicality.npz").is_file()
    assert read_card(merged).intents == read_card(DEMO_ADAPTER).intents
    refused = subprocess.run(
        [str(REPO / ".venv" / "bin" / "intentlm"), "model", "merge", "--model", merged, "-o", tmp_path / "again"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "not an adapter directory" in refused.stderr
