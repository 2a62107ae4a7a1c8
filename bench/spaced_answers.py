"""Answer formatting: does a space before each argument help the model copy it? (bench/accuracy.md §8)

    .venv/bin/python bench/spaced_answers.py train OUT [intentlm train options]   # e.g. --data runs/demo/train.json
    .venv/bin/python bench/spaced_answers.py eval MODEL VALIDATION.json

The data's answers write an argument right after '(' or ',' ("alarm_set(nine am,next sunday)"), so with
SmolLM2's byte-level BPE the argument's first word is another token than the same word in the utterance
("next" against " next"); copying an identical token is the easier job for a small model. `train` runs
`intentlm train` with the training targets rewritten as "alarm_set( nine am, next sunday)" (every argument
preceded by a space, so each of its words is the utterance's token); `eval` decodes VALIDATION.json with the
same grammar widened by those spaces (greedy, arguments limited to word spans of the utterance, as served),
turns each answer back into the canonical text and prints the single-call figures and the two-call exact match.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from eval.metrics import score_record  # noqa: E402
from eval.runner import MAX_NEW_TOKENS, load_llm, model_card  # noqa: E402
from service.intents import _arg_regex, canonical, parse, text_spans, try_parse  # noqa: E402
from service.prompt import END_OF_TURN, build_prompt, build_target  # noqa: E402


def spaced_target(output: str, *, end_of_turn: str = END_OF_TURN) -> str:
    """The training target with a space before every argument."""
    spaced = ";".join(f"{c.name}(" + ",".join(" " + a for a in c.args) + ")" for c in parse(output))
    return build_target(spaced, end_of_turn=end_of_turn)


def spaced_regex(names: list[str], text: str) -> str:
    """service.intents.decoding_regex with a space before every argument."""
    arg = _arg_regex(text_spans(text))
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n)))
    args = "" if arg is None else rf"(?: {arg}(?:, {arg})*)?"
    call = rf"(?:{alternatives})\({args}\)"
    return rf"{call}(?:;{call})*"


def evaluate(model_dir: str, data: str) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    card = model_card(model_dir)
    records = json.loads(Path(data).read_text())
    llm = load_llm(model_dir)
    tokenizer = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=tokenizer.encode(
        build_prompt(r["instruction"], system_prompt=card.system_prompt, tokenizer=tokenizer),
        add_special_tokens=False)) for r in records]
    params = [SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS,
                             stop_token_ids=[tokenizer.convert_tokens_to_ids(END_OF_TURN)],
                             structured_outputs=StructuredOutputsParams(regex=spaced_regex(card.intents,
                                                                                           r["instruction"])))
              for r in records]
    answers = [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
    scores = [score_record(r["output"], canonical(a) if try_parse(a) else a) for r, a in zip(records, answers)]
    single = [s for s, r in zip(scores, records) if ";" not in r["output"]]
    multi = [s for s, r in zip(scores, records) if ";" in r["output"]]
    print(f"single intent {100 * sum(s.reference_intent for s in single) / len(single):.1f} %, param "
          f"{100 * sum(s.reference_params for s in single) / len(single):.1f} %; two-call exact "
          f"{100 * sum(s.exact_match for s in multi) / max(1, len(multi)):.1f} % ({len(single)} and {len(multi)} records)")


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "train":
        import training.trainer
        from training.cli import train

        training.trainer.build_target = spaced_target  # the one place training builds its targets
        train.main(["--output", sys.argv[2], *sys.argv[3:]], standalone_mode=True)
    elif len(sys.argv) == 4 and sys.argv[1] == "eval":
        evaluate(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
