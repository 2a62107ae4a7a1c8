"""Does a better search than greedy find better answers? (bench/accuracy.md §18)

    .venv/bin/python bench/nbest_decoding.py MODEL_DIR DATA [--samples 8] [--temperature 1.0]

Decodes each record of DATA as `intentlm eval` does (the model's prompt, constrained decoding with
word-span arguments), greedily and by sampling ``--samples`` answers, and keeps, per record, the answer
with the highest total log-probability among the greedy one and the samples: an approximation of the
most probable answer under the grammar, which greedy decoding only finds when the first choices are
the right ones. Prints the split figures (bench/split_figures.py) of both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from split_figures import split_figures
    from eval.runner import load_llm, model_card
    from service.examples import ExampleIndex, examples_of
    from service.intents import decoding_regex
    from service.prompt import END_OF_TURN, build_prompt
    from training.data.dataset import load_dataset

    records = load_dataset(args.data)
    card = model_card(args.model)
    llm = load_llm(args.model)
    tokenizer = llm.get_tokenizer()
    index = ExampleIndex.load(args.model)
    prompts = [TokensPrompt(prompt_token_ids=tokenizer.encode(build_prompt(
        r.instruction, system_prompt=card.system_prompt, apply_chat_template=card.apply_chat_template,
        tokenizer=tokenizer, examples=examples_of(index, r.instruction)), add_special_tokens=False)) for r in records]

    def params(n: int, temperature: float) -> list[SamplingParams]:
        return [SamplingParams(n=n, temperature=temperature, max_tokens=64, logprobs=0,
                               stop_token_ids=[tokenizer.convert_tokens_to_ids(END_OF_TURN)],
                               structured_outputs=StructuredOutputsParams(
                                   regex=decoding_regex(card.intents, r.instruction if card.args_from_text else None)))
                for r in records]

    def scored(completion) -> tuple[float, str]:
        total = sum(step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs))
        return total, completion.text.strip()

    greedy = [scored(out.outputs[0]) for out in llm.generate(prompts, params(1, 0.0))]
    sampled = [[scored(c) for c in out.outputs] for out in llm.generate(prompts, params(args.samples, args.temperature))]
    best = [max([g, *s])[1] for g, s in zip(greedy, sampled)]
    golds = [r.output for r in records]
    for name, answers in (("greedy", [g[1] for g in greedy]), (f"best of greedy + {args.samples} samples", best)):
        print(name, json.dumps(split_figures(golds, answers)))
    diverse = sum(any(answer != g[1] for _, answer in s) for g, s in zip(greedy, sampled))
    changed = sum(b != g[1] for b, g in zip(best, greedy))
    print(f"{diverse} of {len(records)} records sampled an answer other than greedy's;"
          f" {changed} of those answers are more probable than greedy's")


if __name__ == "__main__":
    main()
