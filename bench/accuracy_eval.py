"""Accuracy experiments (bench/accuracy.md): one engine, several decoding modes and data files.

    .venv/bin/python bench/accuracy_eval.py MODEL_DIR OUT.json DATA.json [DATA.json ...]

For each file it decodes greedily three ways (free-form, constrained to the intents, constrained
with arguments limited to word spans of the utterance), with the runner ``intentlm eval`` uses,
and writes the metrics of the single-call and multi-call records separately plus every prediction
with its confidence (for calibration studies) to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {"free": dict(constrained=False), "intents": dict(constrained=True, args_from_text=False),
         "spans": dict(constrained=True, args_from_text=True)}


def main(model_dir: str, out: str, *files: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from eval.runner import load_llm, predict_with_model
    from split_figures import by_call_count

    llm = load_llm(model_dir)
    results: dict = {}
    for file in files:
        records = json.loads(Path(file).read_text())
        for mode, kwargs in MODES.items():
            preds = predict_with_model(model_dir, [r["instruction"] for r in records], llm=llm, progress=False,
                                       **kwargs)
            entry = results.setdefault(Path(file).name, {}).setdefault(mode, {})
            parts = by_call_count([r["output"] for r in records], [p.text for p in preds])
            for part, (n, m) in parts.items():
                entry[part] = {"records": n, "intent": round(m.reference.intent_accuracy, 4),
                               "param": round(m.reference.parameter_accuracy, 4), "exact": round(m.exact_match, 4)}
            entry["predictions"] = [{"gold": r["output"], "pred": p.text, "confidence": p.confidence}
                                    for r, p in zip(records, preds)]
            print(Path(file).name, mode, {k: v for k, v in entry.items() if k != "predictions"}, flush=True)
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
