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


def adapter_copy(target: Path, intents: list[str] | None = None) -> Path:
    """The demo adapter under another name, its card's intents narrowed to ``intents`` (so that its grammar differs)."""
    copy = shutil.copytree(DEMO_ADAPTER, target)
    card = json.loads((copy / "intentlm.json").read_text())
    (copy / "intentlm.json").write_text(json.dumps(card | ({"intents": intents} if intents else {})))
    return copy


LIGHTS = ["iot_hue_lightoff", "iot_hue_lightup", "iot_cleaning"]


@pytest.mark.engine
def test_one_server_serves_several_adapters_each_under_its_own_grammar(base_model: Path, tmp_path: Path) -> None:
    """Two adapter directories of one base in one engine (the demo, and a copy whose card allows 3 intents): each
    request names its model by field, OpenAI's ``model`` or path, and decodes under that model's grammar; an admin
    route adds and removes a third while the others answer."""
    lights = adapter_copy(tmp_path / "lights", LIGHTS)
    server = start_server(DEMO_ADAPTER, tmp_path, "--model", f"lights={lights}")
    url, headers = server.url, {"Authorization": server.token}

    def intents(text: str, path: str = "/v1/intents", **body: object) -> dict:
        reply = httpx.post(f"{url}{path}", json={"text": text, **body}, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()

    try:
        reply = intents("turn off the lights")  # the default: the first --model
        assert reply["intents"] == [{"name": "iot_hue_lightoff", "args": []}] and reply["typicality"] > 0.5
        assert intents("wake me up at 7 am")["intents"][0]["name"] == "alarm_set"
        narrowed = intents("wake me up at 7 am", model="lights")
        assert narrowed["intents"][0]["name"] in LIGHTS and narrowed["typicality"] is not None
        assert intents("wake me up at 7 am", path="/models/lights/v1/intents")["raw"] == narrowed["raw"]
        missing = httpx.post(f"{url}/v1/intents", json={"text": "hi", "model": "nope"}, headers=headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=server.token, max_retries=0)
        listed = {model.id: model.model_extra["intentlm"]["intents"] for model in sdk.models.list().data}
        assert listed == {"demo": json.loads((DEMO_ADAPTER / "intentlm.json").read_text())["intents"], "lights": LIGHTS}
        for model, allowed in (("demo", ["alarm_set"]), ("lights", LIGHTS)):
            chat = sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "wake me up at 7 am"}],
                temperature=0,
                max_tokens=24,
                extra_body={"intents": True},
            )
            assert parse(chat.choices[0].message.content)[0].name in allowed, model
        with pytest.raises(openai.NotFoundError):
            sdk.completions.create(model="nope", prompt="hi", max_tokens=2)

        third = adapter_copy(tmp_path / "third")
        added = httpx.post(f"{url}/v1/admin/models", json={"name": "third", "path": str(third)}, headers=headers)
        assert added.status_code == 201, added.text
        assert intents("wake me up at 7 am", model="third")["intents"][0]["name"] == "alarm_set"
        again = httpx.post(f"{url}/v1/admin/models", json={"name": "third", "path": str(third)}, headers=headers)
        assert again.status_code == 409
        merged = httpx.post(f"{url}/v1/admin/models", json={"name": "x", "path": str(base_model)}, headers=headers)
        assert merged.status_code == 404 and "not an adapter directory" in merged.json()["error"]["message"]
        assert httpx.delete(f"{url}/v1/admin/models/third", headers=headers).status_code == 200
        assert httpx.delete(f"{url}/v1/admin/models/demo", headers=headers).status_code == 409  # the default
        gone = httpx.post(f"{url}/v1/intents", json={"text": "hi", "model": "third"}, headers=headers)
        assert gone.status_code == 404

        text = httpx.get(f"{url}/metrics").text
        assert 'model="lights"' in text and 'intentlm_model_info{adapter="true"' in text
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
