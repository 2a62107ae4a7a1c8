"""The one prompt builder: ChatML / the tokenizer's template, history folding, the training target."""

from __future__ import annotations

from pathlib import Path

from service.prompt import build_prompt, build_target, chatml, fold_history

SYSTEM = "You are an intent recognition expert."


def test_chatml_matches_the_reference_layout() -> None:
    expected = (
        "<|im_start|>system\nYou are an intent recognition expert.<|im_end|>\n"
        "<|im_start|>user\nI want to listen to music<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt("I want to listen to music", system_prompt=SYSTEM) == expected
    assert build_prompt("I want to listen to music", system_prompt=SYSTEM) + build_target("play_music()") == (
        expected + "play_music()<|im_end|>"
    )


def test_history_is_folded_like_multi_round_training_data() -> None:
    history = [["I want to listen to music.", "What kind of music?"]]
    assert fold_history("Play jazz", history) == "I want to listen to music. Play jazz"
    assert "user\nI want to listen to music. Play jazz<|im_end|>" in build_prompt(
        "Play jazz", system_prompt=SYSTEM, history=history
    )


def test_chat_mode_renders_real_turns() -> None:
    history = [["I want to listen to music", "What kind of music?"]]
    prompt = build_prompt("Play jazz", system_prompt=SYSTEM, history=history, history_mode="chat")
    assert prompt == chatml(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "I want to listen to music"},
            {"role": "assistant", "content": "What kind of music?"},
            {"role": "user", "content": "Play jazz"},
        ]
    )


def test_without_chat_template_the_prompt_is_the_instruction() -> None:
    assert build_prompt("lights off", system_prompt=SYSTEM, apply_chat_template=False) == "lights off\n"
    assert build_target("iot_hue_lightoff()", end_of_turn="</s>") == "iot_hue_lightoff()</s>"


def test_the_base_models_template_renders_exactly_chatml(base_model: Path) -> None:
    """The prepared model's own chat template and the ChatML fallback agree, so serving and training do too."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    history = [["wake me up", "When?"]]
    for mode in ("fold", "chat"):
        with_template = build_prompt(
            "at seven", system_prompt=SYSTEM, history=history, tokenizer=tokenizer, history_mode=mode
        )
        assert with_template == build_prompt("at seven", system_prompt=SYSTEM, history=history, history_mode=mode)
