"""Export a finished `intentlm train` run as the bundled demo model (see training/demo/README.md).

    .venv/bin/python bench/train_demo.py runs/study/MODEL

Writes training/demo/: the LoRA adapter in bf16 (half the size of PEFT's fp32 file), its config, and
the run's intentlm.json (with the calibration `intentlm eval --calibrate` wrote into it). The test
figures are measured afterwards, once, with `intentlm eval` on the prepared demo (as it is served).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.modelcard import read_card, write_card
from training.basemodel import DEMO_DIR


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
    if card.data is not None:
        card.data.file = "smarthome_train.json, train side of `intentlm data split --test-ratio 0.1 --seed 42`"
    DEMO_DIR.mkdir(exist_ok=True)
    export_adapter(model_dir / "adapter", DEMO_DIR)
    write_card(DEMO_DIR, card)
    print(f"wrote {DEMO_DIR}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
