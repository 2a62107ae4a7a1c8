"""The one prompt builder (DESIGN §3), shared by training, evaluation and serving.

A model is served with exactly the prompt it was trained with, so nothing else in the project
formats a prompt. With ``apply_chat_template`` the tokenizer's chat template renders the turns
(ChatML when the tokenizer has none); without it the prompt is the instruction alone, as the
reference's ``apply_chat_template: false`` trains on the raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

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


def with_examples(instruction: str, examples: Sequence[tuple[str, str]]) -> str:
    """The user turn of a model trained with retrieved examples (service.examples): the training records most
    like the request, with their answers, then the request."""
    if not examples:
        return instruction
    shown = "".join(f"{text} => {answer}\n" for text, answer in examples)
    return f"Similar requests:\n{shown}Request: {instruction}"


def messages_for(
    instruction: str,
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    history: History = (),
    history_mode: HistoryMode = "fold",
    examples: Sequence[tuple[str, str]] = (),
) -> list[dict[str, str]]:
    """The chat turns of one request: system, (past turns in chat mode), user (after its ``examples``)."""
    messages = [{"role": "system", "content": system_prompt}]
    if history_mode == "chat":
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": with_examples(instruction, examples)})
    else:
        messages.append({"role": "user", "content": with_examples(fold_history(instruction, history), examples)})
    return messages


def build_prompt(
    instruction: str,
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    history: History = (),
    apply_chat_template: bool = True,
    tokenizer: ChatTokenizer | None = None,
    history_mode: HistoryMode = "fold",
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """The text the model continues with its answer."""
    if not apply_chat_template:
        return with_examples(fold_history(instruction, history), examples) + "\n"
    messages = messages_for(
        instruction, system_prompt=system_prompt, history=history, history_mode=history_mode, examples=examples
    )
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chatml(messages)


def build_target(output: str, *, end_of_turn: str = END_OF_TURN) -> str:
    """The training target: the answer and the end-of-turn marker, so the model learns to stop.

    Without a chat template, pass the tokenizer's EOS token as ``end_of_turn``.
    """
    return output + end_of_turn
