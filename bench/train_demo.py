"""Build the bundled demo model's files from a finished `intentlm train` run (see training/demo/README.md).

    .venv/bin/python bench/train_demo.py runs/demo/model

1. scores the model on the test files with the reference script's decoding (transformers, greedy,
   free-form) and figures (eval.metrics: intent accuracy, parameter accuracy);
2. writes training/demo/: the LoRA adapter in bf16 (half the size of PEFT's fp32 file), its
   config, and the run's intentlm.json with the test figures added.

The settings were chosen on the validation side of the split (the run's `--eval-data`), never on
the test files; the test figures are computed once, here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eval.metrics import compute_metrics
from service.modelcard import ModelCard, read_card, write_card
from training.basemodel import DEMO_DIR
from training.data.dataset import load_dataset
from training.trainer import generate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_FILES = ("smarthome_test.json", "smarthome_test_multi.json")


def test_figures(model_dir: Path, card: ModelCard) -> dict[str, dict[str, float]]:
    figures = {}
    for name in TEST_FILES:
        records = load_dataset(DATA / name)
        predictions = generate(model_dir, [r.instruction for r in records], card)
        metrics = compute_metrics([r.output for r in records], predictions)
        figures[name] = {"records": len(records), "intent_accuracy": metrics.reference.intent_accuracy,
                         "param_accuracy": metrics.reference.parameter_accuracy,
                         "exact_match": metrics.exact_match, "malformed_rate": metrics.malformed_rate}
        print(name, figures[name], flush=True)
    return figures


def export_adapter(adapter_dir: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              target / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct"  # merged onto the prepared base, never downloaded
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(model_dir: Path) -> None:
    card = read_card(model_dir)
    if card is None:
        sys.exit(f"{model_dir} has no intentlm.json: not an intentlm train output")
    card.metrics["test"] = test_figures(model_dir, card)
    if card.data is not None:
        card.data.file = "smarthome_train.json, train side of `intentlm data split --test-ratio 0.1 --seed 42`"
    DEMO_DIR.mkdir(exist_ok=True)
    export_adapter(model_dir / "adapter", DEMO_DIR)
    write_card(DEMO_DIR, card)
    print(f"wrote {DEMO_DIR}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
