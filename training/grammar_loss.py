"""The answer tokens' loss as constrained decoding sees them (the ``format_loss_weight`` knob).

The server decodes under a per-request grammar (``service.intents.decoding_regex``): at each answer token
only the tokens it allows compete. The usual cross-entropy of a gold token splits into two parts,

    -log p(gold) = -log p(gold | allowed) - log p(allowed),

the choice among the allowed tokens (which intent, which word starts or ends an argument: what decoding
decides) and the mass on the allowed set (writing the format at all: what the grammar already enforces).
``answer_loss`` weighs the second part by ``format_loss_weight``: 1 is plain cross-entropy, 0 spends
the whole loss on the decisions, and a small weight keeps the model able to write the format without
the grammar, which the EAS route (free decoding) needs. bench/accuracy.md §23 measured it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from service.intents import decoding_regex

log = logging.getLogger("intentlm.train")
IGNORE_INDEX = -100  # labels that take no loss (prompt and padding positions)


def allowed_tokens(answers: Sequence[tuple[str, list[int]]], intents: Sequence[str], spans: bool,
                   tokenizer: Any, vocab_size: int, end_of_turn: int) -> list[list[Any]]:
    """Per answer token, the ids of the tokens the grammar allows there (an empty tensor: every token).

    ``answers``: (instruction, answer token ids) per example; ``spans``: arguments are spans of the
    instruction (the card's ``args_from_text``), as the server then constrains them. The grammar is the
    server's, compiled by xgrammar (vLLM's structured-output backend) with the same end-of-turn stop token. An
    answer the grammar rejects allows every token everywhere (plain cross-entropy), and the count is logged.
    Ids rather than vocabulary-wide masks: a few dozen per token, not 49 152 bits, whatever the data size.
    """
    import torch
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[end_of_turn])
    compiler = xgrammar.GrammarCompiler(info)
    bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
    bits = torch.arange(32, dtype=torch.int32)
    every = torch.empty(0, dtype=torch.int32)
    result, rejected = [], 0
    for instruction, answer in answers:
        matcher = xgrammar.GrammarMatcher(compiler.compile_regex(
            decoding_regex(intents, instruction if spans else None)))
        ids = [every] * len(answer)
        for position, token in enumerate(answer):
            if matcher.is_terminated():
                break
            matcher.fill_next_token_bitmask(bitmask)
            mask = ((bitmask[0].unsqueeze(-1) >> bits) & 1).bool().flatten()[:vocab_size]
            ids[position] = mask.nonzero().flatten().to(torch.int32)
            if not matcher.accept_token(token):
                ids = [every] * len(answer)
                rejected += 1
                break
        result.append(ids)
    if rejected:
        log.warning("%d of %d answers are outside the decoding grammar: plain cross-entropy for them",
                    rejected, len(result))
    return result


def answer_loss(logits: Any, labels: Any, allowed: Any, format_loss_weight: float,
                num_items: Any | None = None) -> Any:
    """The summed loss of the answer tokens, over ``num_items`` (default: their count).

    ``logits[:, j]`` predicts ``labels[:, j + 1]`` (the model's own shift); ``allowed[:, j + 1]`` holds the ids
    allowed at that label's position (``allowed_tokens``), padded with -1; only -1: every token is allowed.
    """
    vocab = logits.shape[-1]
    ids = allowed[:, 1:].long()
    mask = ids.new_zeros((*ids.shape[:2], vocab + 1), dtype=bool).scatter_(-1, ids.masked_fill(ids < 0, vocab), True)
    mask = mask[..., :vocab] | (ids < 0).all(-1, keepdim=True)
    scores = logits[:, :-1].float()
    targets = labels[:, 1:]
    answered = targets != IGNORE_INDEX
    gold = scores.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    log_allowed = scores.masked_fill(~mask, float("-inf")).logsumexp(-1)
    per_token = log_allowed - gold
    if format_loss_weight:
        per_token = per_token + format_loss_weight * (scores.logsumexp(-1) - log_allowed)
    return per_token[answered].sum() / (num_items if num_items is not None else answered.sum())
