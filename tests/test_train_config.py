"""Training config resolution: defaults, presets, files, flags (both spellings), errors. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import (
    DEFAULT_PRESET,
    MIN_STEPS_PER_EPOCH,
    PRESETS,
    ConfigError,
    TrainConfig,
    fit_batch_to_data,
    parse_knob_args,
    read_config_file,
    resolve_config,
)


def test_defaults_are_the_reference_table() -> None:
    config = TrainConfig()
    assert (config.learning_rate, config.num_train_epochs, config.per_device_train_batch_size) == (5e-5, 1, 1)
    assert (config.gradient_accumulation_steps, config.seq_length, config.lora_dim, config.lora_alpha) == (
        8,
        128,
        32,
        32,
    )
    assert (config.load_in_4bit, config.load_in_8bit, config.apply_chat_template) == (True, False, True)
    assert config.system_prompt == "You are a helpful assistant"
    assert config.mode == "qlora"


def test_every_knob_is_documented() -> None:
    assert all(field.description for field in TrainConfig.model_fields.values())


@pytest.mark.parametrize(
    ("preset", "mode", "lr", "epochs", "rank", "alpha"),
    [
        ("full", "full", 5e-5, 3, 0, 0),
        ("lora", "lora", 3e-4, 5, 64, 16),
        ("qlora", "qlora", 3e-4, 5, 64, 16),
    ],
)
def test_presets_follow_the_recommended_table(
    preset: str, mode: str, lr: float, epochs: int, rank: int, alpha: int
) -> None:
    config, explicit = resolve_config(preset)
    assert (config.mode, config.learning_rate, config.num_train_epochs) == (mode, lr, epochs)
    assert (config.lora_dim, config.lora_alpha, config.seq_length) == (rank, alpha, 256)
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 256
    assert explicit == set()


def test_the_default_preset_is_the_studied_recipe_and_none_keeps_the_knob_defaults() -> None:
    from training.cli import train

    assert next(p for p in train.params if p.name == "preset").default == DEFAULT_PRESET == "intent"
    config, explicit = resolve_config(DEFAULT_PRESET)
    assert (config.mode, config.learning_rate, config.num_train_epochs) == ("full", 1e-4, 3) and explicit == set()
    assert config.compose_multi_intent == 0.2  # docs/decisions.md, "Recipe and presets"
    assert config.model_dump() == TrainConfig(**PRESETS[DEFAULT_PRESET]).model_dump()
    assert resolve_config("none")[0] == resolve_config(None)[0] == TrainConfig()


def test_preset_batch_shrinks_to_the_data_and_says_so() -> None:
    config, explicit = resolve_config("lora")
    note = fit_batch_to_data(config, 1152, explicit)
    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps
    assert global_batch == 32 and 1152 / global_batch >= MIN_STEPS_PER_EPOCH
    assert note is not None and "256 -> 32" in note
    tiny, explicit = resolve_config("full")
    fit_batch_to_data(tiny, 10, explicit)
    assert tiny.per_device_train_batch_size * tiny.gradient_accumulation_steps == 1


def test_an_explicit_batch_is_never_shrunk() -> None:
    config, explicit = resolve_config("lora", flag_values={"gradient_accumulation_steps": 4})
    assert fit_batch_to_data(config, 100, explicit) is None
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 64


def test_precedence_defaults_preset_file_flags(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 1e-4\nnum-train-epochs: 2\nlora_dim: 8\n")
    config, explicit = resolve_config("lora", read_config_file(path), parse_knob_args(["--lora_dim", "4"]))
    assert (config.learning_rate, config.num_train_epochs, config.lora_dim, config.lora_alpha) == (1e-4, 2, 4, 16)
    assert explicit == {"learning_rate", "num_train_epochs", "lora_dim"}


def test_json_config_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"seq_length": 64, "load_in_4bit": False}))
    config, _ = resolve_config(file_values=read_config_file(path))
    assert (config.seq_length, config.mode) == (64, "lora")


def test_flags_with_values_and_equals() -> None:
    values = parse_knob_args(
        [
            "--learning_rate",
            "3e-4",
            "--lora_dim",
            "0",
            "--load_in_4bit=false",
            "--system_prompt",
            "true",
            "--num_train_epochs",
            "0.5",
        ]
    )
    config, _ = resolve_config(flag_values=values)
    assert (config.learning_rate, config.lora_dim, config.load_in_4bit, config.num_train_epochs) == (
        3e-4,
        0,
        False,
        0.5,
    )
    assert config.system_prompt == "true"  # text knobs stay text
    assert config.mode == "full"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learning_rat", "1"], "unknown knob --learning_rat; valid knobs: learning_rate"),
        (["--lora-dim", "0"], "--lora-dim: knobs keep the reference's names; spell it --lora_dim"),
        (["--lora_dim"], "--lora_dim needs a value"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_flags(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_knob_args(args)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": -1}, "learning_rate"),
        ({"lora_dim": "many"}, "lora_dim"),
        ({"load_in_4bit": True, "load_in_8bit": True}, "exclusive"),
        ({"threshold_folds": 1}, "0 \\(off\\) or at least 2"),
        ({"threshold_folds": -2}, "threshold_folds"),
        ({"threshold_folds": "many"}, "threshold_folds"),
        ({"bogus": 1}, "unknown knob bogus"),
    ],
)
def test_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(flag_values=values)


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "unknown.yaml").write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown knob epochs"):
        resolve_config(file_values=read_config_file(tmp_path / "unknown.yaml"))


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("huge")
