"""What the predictor adds to each `/v1/intents` answer, in-process: `Predictor.ranking` and the whole
`Predictor.answer` (parse, confidence, ranking, out-of-scope rule) on a model's own tokenizer.

The decoded answer is the model's first intent spelled in its tokens, with ``--candidates`` alternatives a step
(what vLLM returns with ``logprobs=5``: the decoded token and 5 others), so the ranking walks every branch.

    .venv/bin/python bench/predictor_cost.py --model ~/.cache/intentlm/models/smarthome-demo [--calls 2000]
"""

from __future__ import annotations

import argparse
import random
import timeit
from pathlib import Path

from transformers import AutoTokenizer

from service.modelcard import read_card
from service.predictor import RANKING_CANDIDATES, Decoded, Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with an intentlm.json")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=RANKING_CANDIDATES)
    args = parser.parse_args()

    card = read_card(args.model)
    assert card is not None and card.intents, f"{args.model} has no card with intents"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    predictor = Predictor(card, tokenizer, max_model_len=2048)
    text = f"{card.intents[0]}()"
    ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(0)
    vocabulary = len(tokenizer)
    steps = [{token: -0.1, **{rng.randrange(vocabulary): -3.0 for _ in range(args.candidates)}} for token in ids]
    decoded = Decoded(text, ids, [-0.1] * len(ids), "stop", None, steps)
    for name, call in (
        ("ranking", lambda: predictor.ranking(decoded)),
        ("answer", lambda: predictor.answer(decoded, 0.5)),
    ):
        seconds = timeit.timeit(call, number=args.calls) / args.calls
        print(f"{name}: {seconds * 1e3:.3f} ms per answer ({len(card.intents)} intents, {len(ids)} answer tokens)")


if __name__ == "__main__":
    main()
