"""The typicality pass alone: whole prompts against the shared system-prompt turn run once per batch, same run.

    .venv/bin/python bench/typicality_pass.py [--model DIR] [--data FILE] [--repeat 2]

Times service.typicality.HiddenStates over the instructions of FILE (default: smarthome_test + smarthome_oos_test,
HWU64, CC BY 4.0, in data/smarthome/) rendered as the server renders them, in batches of 16, with torch's default
threads; the two ways alternate ``--repeat`` times. Prints seconds per run and the largest typicality difference
between them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import service.typicality as typicality
from service.modelcard import demo_model_dir, read_card
from service.prompt import prompt_token_ids

DATA = Path(__file__).resolve().parents[1] / "data" / "smarthome"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=demo_model_dir())
    parser.add_argument(
        "--data", type=Path, nargs="*", default=[DATA / "smarthome_test.json", DATA / "smarthome_oos_test.json"]
    )
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    card = read_card(args.model)
    if card is None:
        parser.error(f"{args.model} has no intentlm.json")
    instructions = [r["instruction"] for f in args.data for r in json.loads(f.read_text())]
    prompts = prompt_token_ids(
        instructions, tokenizer, system_prompt=card.system_prompt, apply_chat_template=card.apply_chat_template
    )
    states = typicality.HiddenStates(args.model)
    statistics = typicality.IntentStatistics.load(args.model)
    states(prompts[:32])  # warm-up
    shared = typicality._shared_prefix
    scores = {}
    for _ in range(args.repeat):
        for name, prefix in (("shared prefix once per batch", shared), ("whole prompts", lambda p: 0)):
            typicality._shared_prefix = prefix
            start = time.perf_counter()
            result = states(prompts)
            print(f"{name:30s} {time.perf_counter() - start:6.1f} s for {len(prompts)} prompts")
            if statistics is not None:
                scores[name] = statistics.typicality(result)
    if len(scores) == 2:
        a, b = scores.values()
        print(f"largest typicality difference between the two: {abs(a - b).max():.4f}")


if __name__ == "__main__":
    main()
