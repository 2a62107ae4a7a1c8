"""Which hidden state and how much shrinkage for the typicality score (bench/accuracy.md §6), on held-out intents.

    .venv/bin/python bench/typicality_study.py MODEL TRAIN.json HELDOUT.json REPORT

MODEL was trained on TRAIN.json; HELDOUT.json holds in-scope validation records and `oos()` records of intents
held out of training (bench/heldout_oos.py); REPORT is an `intentlm eval --model MODEL --data HELDOUT.json` report,
for which in-scope answers were correct. For each state (the last token's state after the last layer, as served;
the last token's state after the middle layer; the mean over the prompt of the last layer's states) and each
shrinkage, it fits service.typicality's statistics on TRAIN.json and prints the AUROC (in-scope against held-out
records) and the held-out recall at the lowest typicality of a correct in-scope answer. The prompts are rendered
as the server renders them; forward passes in float32, one prompt at a time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions  # noqa: E402
from service.modelcard import read_card  # noqa: E402
from service.prompt import build_prompt  # noqa: E402
from service.scope import DEFAULT_OOS_LABEL  # noqa: E402
from service.typicality import IntentStatistics  # noqa: E402

SHRINKAGES = (0.01, 0.1, 0.3, 0.5)


def states(model_dir: str, instructions: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    card = read_card(model_dir)
    out: dict[str, list[np.ndarray]] = {"last token, last layer": [], "last token, middle layer": [],
                                        "mean, last layer": []}
    for text in instructions:
        prompt = build_prompt(text, system_prompt=card.system_prompt, tokenizer=tokenizer)
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.inference_mode():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        out["last token, last layer"].append(hidden[-1][0, -1].numpy())
        out["last token, middle layer"].append(hidden[len(hidden) // 2][0, -1].numpy())
        out["mean, last layer"].append(hidden[-1][0].mean(0).numpy())
    return {name: np.stack(values) for name, values in out.items()}


def main() -> None:
    model_dir, train_file, heldout_file, report = sys.argv[1:5]
    train = [r for r in json.loads(Path(train_file).read_text()) if not r["output"].startswith(f"{DEFAULT_OOS_LABEL}(")]
    heldout = json.loads(Path(heldout_file).read_text())
    rows = {row["instruction"]: row for row in read_predictions(report)}
    outside = np.array([r["output"] == f"{DEFAULT_OOS_LABEL}()" for r in heldout])
    correct = np.array([not o and rows[r["instruction"]]["intent_correct"] for r, o in zip(heldout, outside)])
    labels = [r["output"].split("(", 1)[0] for r in train]
    fitted, scored = states(model_dir, [r["instruction"] for r in train]), states(model_dir,
                                                                                 [r["instruction"] for r in heldout])
    print("| state | shrinkage | AUROC | held-out recall at the lowest correct in-scope score |")
    print("|---|---|---|---|")
    for name in fitted:
        for shrinkage in SHRINKAGES:
            score = IntentStatistics.fit(fitted[name], labels, shrinkage).typicality(scored[name])
            pos, neg = score[~outside], score[outside]
            auroc = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
            recall = (neg < score[correct].min()).mean()
            print(f"| {name} | {shrinkage} | {auroc:.3f} | {100 * recall:.1f} % |")


if __name__ == "__main__":
    main()
