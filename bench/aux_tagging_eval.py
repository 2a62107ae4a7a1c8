"""Throwaway: the auxiliary tagging task's own answers on a validation side, against the main task's.

    python bench/aux_tagging_eval.py MODEL_DIR DATA REPORT_DIR
Greedy, unconstrained decoding of the tagging prompt; the bracketed spans become the arguments, in the
utterance's order, and replace the main answer's arguments on single-call records (intent from the main answer).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def main() -> None:
    model, data, report = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    from vllm import SamplingParams

    from split_figures import split_figures
    from eval.report import read_predictions
    from eval.runner import load_llm, model_card
    from service.intents import parse
    from service.prompt import END_OF_TURN, build_prompt
    from training.data.dataset import load_dataset
    from training.trainer import TAGGING_PROMPT

    records = load_dataset(data)
    card = model_card(model)
    llm = load_llm(model)
    tok = llm.get_tokenizer()
    prompts = [build_prompt(r.instruction, system_prompt=TAGGING_PROMPT, apply_chat_template=card.apply_chat_template,
                            tokenizer=tok) for r in records]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=96,
                                                stop_token_ids=[tok.convert_tokens_to_ids(END_OF_TURN)]))
    tags = [o.outputs[0].text.strip() for o in outs]
    rows = read_predictions(report)
    golds, main, combined = [], [], []
    copied = 0
    for r, t, row in zip(records, tags, rows):
        assert row["instruction"] == r.instruction
        copied += t.replace("[", "").replace("]", "") == r.instruction
        calls = parse(r.output)
        if len(calls) != 1:
            continue
        spans = re.findall(r"\[([^\]]*)\]", t)
        try:
            pred = parse(row["raw"])
        except Exception:
            pred = []
        golds.append(r.output)
        main.append(row["raw"])
        name = pred[0].name if pred else "none"
        combined.append(f"{name}({','.join(spans)})")
    print("copied exactly", copied, "of", len(records))
    print("main", json.dumps(split_figures(golds, main)))
    print("tagging args", json.dumps(split_figures(golds, combined)))
    for g, m, c in zip(golds, main, combined):
        if (g == m) != (g == c):
            print(f"  gold {g} | main {m} | tagging {c}")


if __name__ == "__main__":
    main()
