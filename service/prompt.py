"""The one prompt builder (DESIGN §3), shared by training, evaluation and serving.

A model is served with exactly the prompt it was trained with, so nothing else in the project
formats a prompt. With ``apply_chat_template`` the tokenizer's chat template renders the turns
(ChatML when the tokenizer has none); without it the prompt is the instruction alone, as the
reference's ``apply_chat_template: false`` trains on the raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

END_OF_TURN = "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"

HistoryMode = Literal["fold", "chat"]
History = Sequence[Sequence[str]]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt needs (kept structural: no transformers import)."""

    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> str: ...


def chatml(messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """ChatML, the format the reference trains Qwen with and SmolLM2's own template produces."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{END_OF_TURN}\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def fold_history(instruction: str, history: History) -> str:
    """Join the previous user turns and the new one into one instruction.

    This is how the reference stores multi-round chats as training records
    ("I want to listen to music. Play ***"), so a folded request looks like the training data.
    """
    turns = [str(turn[0]).strip() for turn in history if turn and str(turn[0]).strip()]
    return " ".join([*turns, instruction.strip()])


def messages_for(
    instruction: str,
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    history: History = (),
    history_mode: HistoryMode = "fold",
) -> list[dict[str, str]]:
    """The chat turns of one request: system, (past turns in chat mode), user."""
    messages = [{"role": "system", "content": system_prompt}]
    if history_mode == "chat":
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": instruction})
    else:
        messages.append({"role": "user", "content": fold_history(instruction, history)})
    return messages


def build_prompt(
    instruction: str,
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    history: History = (),
    apply_chat_template: bool = True,
    tokenizer: ChatTokenizer | None = None,
    history_mode: HistoryMode = "fold",
) -> str:
    """The text the model continues with its answer."""
    if not apply_chat_template:
        return fold_history(instruction, history) + "\n"
    messages = messages_for(instruction, system_prompt=system_prompt, history=history, history_mode=history_mode)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chatml(messages)


def prompt_token_ids(
    instructions: Sequence[str], tokenizer: Any, *, system_prompt: str, apply_chat_template: bool
) -> list[list[int]]:
    """The token ids of the instructions' prompts, as the server renders and tokenizes them (no special tokens
    added: the chat template writes them). Training and the data check measure prompts through this."""
    prompts = [
        build_prompt(text, system_prompt=system_prompt, apply_chat_template=apply_chat_template, tokenizer=tokenizer)
        for text in instructions
    ]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def build_target(output: str, *, end_of_turn: str = END_OF_TURN) -> str:
    """The training target: the answer and the end-of-turn marker, so the model learns to stop.

    Without a chat template, pass the tokenizer's EOS token as ``end_of_turn``.
    """
    return output + end_of_turn
