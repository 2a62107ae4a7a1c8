"""Cross-fitted training scores as the typicality calibration set (bench/accuracy.md §9).

    .venv/bin/python bench/typicality_crossfit.py MODEL TRAIN.json VALIDATION.json REPORT

MODEL was trained on TRAIN.json; VALIDATION.json holds in-scope validation records and, optionally, `oos()`
records of intents held out of training (bench/heldout_oos.py); REPORT is an `intentlm eval --model MODEL --data
VALIDATION.json` report (which in-scope answers were right). Prints the quantiles of the typicality of the
training requests scored in-sample and cross-fitted (service.typicality.IntentStatistics.fit, each fold scored by
statistics fitted without it) beside the validation requests', and, for 5, 10 and 20 folds, the threshold the
cross-fitted scores give (eval.calibration.choose_threshold), the correct validation answers below it and the
out-of-scope recall at it, and what the fit costs with and without the folds. The states are the served ones
(service.typicality.HiddenStates, bf16, batched).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.calibration import choose_threshold  # noqa: E402
from eval.report import read_predictions  # noqa: E402
from service.modelcard import read_card  # noqa: E402
from service.scope import DEFAULT_OOS_LABEL  # noqa: E402
from service.typicality import HiddenStates, IntentStatistics  # noqa: E402
from training.data.dataset import load_dataset  # noqa: E402
from training.trainer import in_scope, load_tokenizer, prompt_token_ids  # noqa: E402

QUANTILES = (0.0, 0.01, 0.02, 0.05, 0.5)


def main() -> None:
    model_dir, train_file, validation_file, report = sys.argv[1:5]
    card = read_card(model_dir)
    tokenizer = load_tokenizer(Path(model_dir))
    states = HiddenStates(model_dir)
    train = in_scope(load_dataset(Path(train_file)))
    validation = load_dataset(Path(validation_file))
    fitted = states(prompt_token_ids(train, tokenizer, card.system_prompt, card.apply_chat_template))
    scored = states(prompt_token_ids(validation, tokenizer, card.system_prompt, card.apply_chat_template))
    labels = [next(c.name for c in r.calls() if c.name != DEFAULT_OOS_LABEL) for r in train]
    rows = {row["instruction"]: row for row in read_predictions(report)}
    outside = np.array([r.calls()[0].name == DEFAULT_OOS_LABEL for r in validation])
    correct = np.array([not o and rows[r.instruction]["intent_correct"] for r, o in zip(validation, outside)])

    statistics = IntentStatistics.fit(fitted, labels)
    typicality = statistics.typicality(scored)
    print("quantiles", QUANTILES)
    for name, values in (("training, in-sample", statistics.typicality(fitted)),
                         ("training, cross-fitted (20 folds)", statistics.held_out),
                         ("validation, in-scope", typicality[~outside])):
        print(f"  {name:34s}", " ".join(f"{q:.3f}" for q in np.quantile(values, QUANTILES)))
    print(f"validation alone: threshold {choose_threshold(list(typicality[~outside]), list(correct[~outside])):.3f}"
          f" ({correct.sum()} correct answers)")
    start = time.perf_counter()
    IntentStatistics.fit(fitted, labels, folds=len(fitted))  # more folds than half the states: no cross-fitting
    alone = time.perf_counter() - start
    print(f"fit of the {len(fitted)} training states without cross-fitting: {alone:.2f} s")
    for folds in (5, 10, 20):
        start = time.perf_counter()
        held_out = IntentStatistics.fit(fitted, labels, folds=folds).held_out
        took = time.perf_counter() - start
        threshold = choose_threshold(held_out.tolist(), [True] * len(held_out))
        line = (f"{folds:2d} folds ({took:.2f} s): threshold {threshold:.3f}, correct validation answers below "
                f"{(typicality[correct] < threshold).sum()}")
        if outside.any():
            line += f", out-of-scope recall {100 * (typicality[outside] < threshold).mean():.1f} %"
        print(line)


if __name__ == "__main__":
    main()
