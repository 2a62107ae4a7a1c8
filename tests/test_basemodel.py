"""`intentlm model prepare`: the base model and the bundled demo model, idempotent and atomic, and sane."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.modelcard import demo_model_dir, read_card
from tests.conftest import REPO
from training.basemodel import DEMO_DIR, is_prepared, prepare_base_model, prepare_demo_model

SMARTHOME_INTENTS = 12


def generate(model_dir: Path, instruction: str, system_prompt: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.prompt import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer(
        build_prompt(instruction, system_prompt=system_prompt, tokenizer=tokenizer),
        return_tensors="pt",
        add_special_tokens=False,
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_base_model_is_idempotent_and_generates_sane_text(base_model: Path) -> None:
    stamp = (base_model / "model.safetensors").stat().st_mtime_ns
    assert prepare_base_model(base_model) == base_model
    assert (base_model / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    answer = generate(base_model, "What is the capital of France?", "You are a helpful assistant")
    assert "Paris" in answer


def test_demo_model_recognises_smart_home_intents(base_model: Path) -> None:
    demo = prepare_demo_model(base_model)
    assert demo == demo_model_dir() and is_prepared(demo)
    card = read_card(demo)
    assert card is not None and len(card.intents) == SMARTHOME_INTENTS
    assert card.system_prompt and card.data is not None and card.metrics["train_loss"] > 0
    assert generate(demo, "turn off the lights in the kitchen", card.system_prompt).startswith("iot_hue_lightoff(")
    assert generate(demo, "wake me up at seven am tomorrow", card.system_prompt).startswith("alarm_set(")


def test_demo_model_is_rebuilt_only_when_the_adapter_changes(base_model: Path, tmp_path: Path) -> None:
    target = prepare_demo_model(base_model, tmp_path / "demo")
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert prepare_demo_model(base_model, target) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    card = (target / "intentlm.json").read_text()
    (target / "intentlm.json").write_text(card.replace('"adapter_sha256": "', '"adapter_sha256": "stale'))
    prepare_demo_model(base_model, target)
    assert (target / "model.safetensors").stat().st_mtime_ns != stamp


def test_prepare_command_builds_base_and_demo_atomically(base_model: Path, tmp_path: Path) -> None:
    """A fresh conversion through the real command into an empty home; an existing previous model survives a failure."""
    output = tmp_path / "models" / "base"
    (tmp_path / "models" / "smarthome-demo").mkdir(parents=True)
    (tmp_path / "models" / "smarthome-demo" / "keep").write_text("previous")
    command = [str(REPO / ".venv" / "bin" / "intentlm"), "model", "prepare", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "base model ready" in result.stdout and "demo model ready" in result.stdout
    assert is_prepared(output) and is_prepared(tmp_path / "models" / "smarthome-demo")
    assert not (tmp_path / "models" / "smarthome-demo" / "keep").exists()  # replaced as a whole
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temporary leftovers
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 0 and "converting" not in again.stderr


def test_demo_prepare_failure_leaves_previous_model(
    base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / "keep").write_text("previous")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("training.merge.save_model_dir", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_demo_model(base_model, target)
    assert (target / "keep").read_text() == "previous" and len(os.listdir(tmp_path)) == 1


def test_demo_adapter_is_small() -> None:
    assert (DEMO_DIR / "adapter_model.safetensors").stat().st_size < 12 * 2**20
    assert "intentlm train" in (DEMO_DIR / "README.md").read_text()
