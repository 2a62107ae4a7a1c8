"""Does a bias against closing the argument list fix omitted arguments? (bench/accuracy.md §7, validation only)

    .venv/bin/python bench/closing_bias.py MODEL VALIDATION.json 0,0.5,1,2,3

Omitted arguments are the commonest parameter error on the validation split ("please put all the lights" ->
``iot_hue_lightup()``). This decodes VALIDATION.json as the server does (greedy, the intent grammar with
arguments limited to word spans of the utterance) with a negative logit bias on every token that contains ')'
(vLLM's ``logit_bias``; the grammar decides where such a token may stand, so the bias only weighs "close the call"
against "go on with an argument"), for each bias given, in one engine, and prints the single-call figures, the
two-call exact match and each record whose parameter figure changed against bias 0.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from eval.metrics import score_record  # noqa: E402
from eval.runner import MAX_NEW_TOKENS, load_llm, model_card  # noqa: E402
from service.intents import decoding_regex  # noqa: E402
from service.prompt import END_OF_TURN, build_prompt  # noqa: E402


def main() -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    model_dir, data = sys.argv[1], sys.argv[2]
    biases = [float(b) for b in sys.argv[3].split(",")]
    card = model_card(model_dir)
    records = json.loads(Path(data).read_text())
    llm = load_llm(model_dir)
    tokenizer = llm.get_tokenizer()
    closing = [i for token, i in tokenizer.get_vocab().items() if ")" in tokenizer.convert_tokens_to_string([token])]
    prompts = [TokensPrompt(prompt_token_ids=tokenizer.encode(
        build_prompt(r["instruction"], system_prompt=card.system_prompt, tokenizer=tokenizer),
        add_special_tokens=False)) for r in records]
    baseline: dict[str, bool] = {}
    for bias in biases:
        params = [SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS,
                                 stop_token_ids=[tokenizer.convert_tokens_to_ids(END_OF_TURN)],
                                 logit_bias={i: -bias for i in closing} if bias else None,
                                 structured_outputs=StructuredOutputsParams(
                                     regex=decoding_regex(card.intents, r["instruction"])))
                  for r in records]
        answers = [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
        scores = [score_record(r["output"], answer) for r, answer in zip(records, answers)]
        single = [s for s, r in zip(scores, records) if ";" not in r["output"]]
        multi = [s for s, r in zip(scores, records) if ";" in r["output"]]
        print(f"bias -{bias}: single intent {100 * sum(s.reference_intent for s in single) / len(single):.1f} %, "
              f"param {100 * sum(s.reference_params for s in single) / len(single):.1f} %; two-call exact "
              f"{100 * sum(s.exact_match for s in multi) / max(1, len(multi)):.1f} %", flush=True)
        for r, answer, s in zip(records, answers, scores):
            if baseline and ";" not in r["output"] and s.reference_params != baseline[r["instruction"]]:
                print(f"    {'fixed ' if s.reference_params else 'broken'} {r['instruction']} -> {answer} "
                      f"(gold {r['output']})")
        baseline = baseline or {r["instruction"]: s.reference_params for r, s in zip(records, scores)}


if __name__ == "__main__":
    main()
