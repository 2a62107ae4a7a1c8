"""What the typicality threshold's cross-fitting costs at training time, and what its folds give.

    .venv/bin/python bench/typicality_crossfit.py MODEL TRAIN.json VALIDATION.json [REPORT]

MODEL was trained on TRAIN.json; VALIDATION.json holds in-scope validation records and, optionally, `oos()`
records of intents held out of training. REPORT, optional, is an `intentlm eval --model MODEL --data
VALIDATION.json` report (which in-scope answers were right). Prints the quantiles of the typicality of the
training requests scored in-sample and cross-fitted (service.typicality.IntentStatistics.fit, each fold scored by
statistics fitted without it) beside the validation requests'; what the fit costs without and with 5, 10 and 20
folds (the default, service.typicality.FOLDS); and, for each, the threshold the cross-fitted scores give
(eval.calibration.choose_threshold), the out-of-scope recall at it and, with REPORT, the correct validation answers
below it. The states are the served ones (service.typicality.HiddenStates, bf16, batched), computed once.
The decision this measured is in docs/decisions.md ("The typicality threshold from cross-fitted training scores").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.calibration import choose_threshold
from eval.report import read_predictions
from service.dataset import load_dataset
from service.modelcard import read_card
from service.prompt import prompt_token_ids
from service.scope import DEFAULT_OOS_LABEL
from service.typicality import HiddenStates, IntentStatistics
from training.trainer import in_scope, load_tokenizer

QUANTILES = (0.0, 0.01, 0.02, 0.05, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a trained model directory")
    parser.add_argument("train", type=Path, help="the records MODEL was trained on")
    parser.add_argument("validation", type=Path, help="in-scope validation records, optionally oos() ones")
    parser.add_argument("report", type=Path, nargs="?", help="an `intentlm eval` report of VALIDATION on MODEL")
    args = parser.parse_args()
    card = read_card(args.model)
    if card is None:
        parser.error(f"{args.model} has no intentlm.json")
    tokenizer = load_tokenizer(args.model)
    states = HiddenStates(args.model)
    train = in_scope(load_dataset(args.train))
    validation = load_dataset(args.validation)

    def prompts(records: list) -> list[list[int]]:
        return prompt_token_ids(
            [r.instruction for r in records],
            tokenizer,
            system_prompt=card.system_prompt,
            apply_chat_template=card.apply_chat_template,
        )

    fitted, scored = states(prompts(train)), states(prompts(validation))
    labels = [next(c.name for c in r.calls() if c.name != DEFAULT_OOS_LABEL) for r in train]
    outside = np.array([r.calls()[0].name == DEFAULT_OOS_LABEL for r in validation])
    if args.report is not None:
        rows = {row["instruction"]: row for row in read_predictions(args.report)}
        correct = np.array([not o and rows[r.instruction]["intent_correct"] for r, o in zip(validation, outside)])
    else:
        correct = None

    statistics = IntentStatistics.fit(fitted, labels)
    typicality = statistics.typicality(scored)
    print("quantiles", QUANTILES)
    for name, values in (
        ("training, in-sample", statistics.typicality(fitted)),
        ("training, cross-fitted (20 folds)", statistics.held_out),
        ("validation, in-scope", typicality[~outside]),
    ):
        if len(values):
            print(f"  {name:34s}", " ".join(f"{q:.3f}" for q in np.quantile(values, QUANTILES)))
    if correct is not None:
        threshold = choose_threshold(list(typicality[~outside]), list(correct[~outside]))
        print(f"validation alone: threshold {threshold:.3f} ({correct.sum()} correct answers)")
    start = time.perf_counter()
    IntentStatistics.fit(fitted, labels, folds=len(fitted))  # more folds than half the states: no cross-fitting
    alone = time.perf_counter() - start
    print(f"fit of the {len(fitted)} training states without cross-fitting: {alone:.2f} s")
    for folds in (5, 10, 20):
        start = time.perf_counter()
        held_out = IntentStatistics.fit(fitted, labels, folds=folds).held_out
        took = time.perf_counter() - start
        if not len(held_out):
            print(f"{folds:2d} folds ({took:.2f} s): too few training states to cross-fit")
            continue
        threshold = choose_threshold(held_out.tolist(), [True] * len(held_out))
        line = f"{folds:2d} folds ({took:.2f} s): threshold {threshold:.3f}"
        if correct is not None:
            line += f", correct validation answers below {(typicality[correct] < threshold).sum()}"
        if outside.any():
            line += f", out-of-scope recall {100 * (typicality[outside] < threshold).mean():.1f} %"
        print(line)


if __name__ == "__main__":
    main()
