"""training.grammar_loss: the grammar's allowed tokens from the real tokenizer and xgrammar, and the loss."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

from service.prompt import END_OF_TURN, build_target  # noqa: E402
from training.grammar_loss import IGNORE_INDEX, allowed_tokens, answer_loss  # noqa: E402

INTENTS = ["alarm_set", "audio_volume_mute", "play_music"]


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def allowed_of(tokenizer, instruction: str, output: str) -> tuple[list[int], torch.Tensor]:
    """The answer's token ids and, per token, the allowed tokens as a vocabulary-wide bool row."""
    answer = tokenizer(build_target(output), add_special_tokens=False)["input_ids"]
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    (ids,) = allowed_tokens([(instruction, answer)], INTENTS, True, tokenizer, len(tokenizer), eot)
    rows = torch.zeros(len(answer), len(tokenizer), dtype=torch.bool)
    for position, allowed in enumerate(ids):
        rows[position, allowed.long()] = True
        if not len(allowed):
            rows[position] = True
    return answer, rows


def test_the_grammar_allows_the_gold_answer_and_what_the_server_would_allow(tokenizer) -> None:
    answer, allowed = allowed_of(tokenizer, "set alarm tomorrow at six am", "alarm_set(tomorrow,six am)")
    assert len(allowed) == len(answer)
    assert all(allowed[i, token] for i, token in enumerate(answer))
    counts = allowed.sum(-1).tolist()
    assert counts[0] > 1  # the first token chooses among the intents' first tokens
    assert 1 in counts  # positions the grammar decides alone (inside an intent name)
    assert all(c < 100 for c in counts)  # never the whole vocabulary
    start = answer.index(tokenizer.convert_tokens_to_ids("(")) + 1
    words = {tokenizer.decode([t]).strip() for t in allowed[start].nonzero().flatten().tolist()}
    assert "banana" not in words and "six" in words  # an argument starts with a word of the request
    # the end of turn is the last decision: closing the answer or going on with another call
    assert allowed[-1, answer[-1]] and allowed[-1].sum() > 1


def test_an_answer_outside_the_grammar_allows_every_token(tokenizer) -> None:
    _, allowed = allowed_of(tokenizer, "set alarm tomorrow at six am", "alarm_set(banana)")
    assert bool(allowed.all())


def test_weight_one_is_plain_cross_entropy_and_zero_the_masked_one() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 70)
    labels = torch.tensor([[IGNORE_INDEX, 3, 5, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 7, 1]])
    allowed = torch.full((2, 4, 2), -1, dtype=torch.int32)  # -1 only: every token
    allowed[0, 1] = torch.tensor([3, 9])  # label 3 competes with token 9 only
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 70), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert answer_loss(logits, labels, allowed, 1.0) == pytest.approx(plain.item(), rel=1e-5)
    choice = -torch.log_softmax(logits[0, 0, [3, 9]], -1)[0]
    rest = [-torch.log_softmax(logits[r, c], -1)[t] for r, c, t in ((0, 1, 5), (1, 1, 7), (1, 2, 1))]
    masked = (choice + sum(rest)) / 4
    assert answer_loss(logits, labels, allowed, 0.0) == pytest.approx(masked.item(), rel=1e-5)
    assert answer_loss(logits, labels, allowed, 0.0, num_items=8) == pytest.approx(masked.item() / 2, rel=1e-5)
