"""Make a finished `intentlm train` run the bundled demo model (see training/demo/README.md).

    .venv/bin/python bench/train_demo.py runs/study/MODEL     # 1. export the run into training/demo/
    intentlm model prepare                                   #    merge it: $INTENTLM_HOME/models/smarthome-demo
    intentlm model scope $INTENTLM_HOME/models/smarthome-demo --data TRAIN.json
    intentlm eval --model $INTENTLM_HOME/models/smarthome-demo --data VAL.json --calibrate
    .venv/bin/python bench/train_demo.py --adopt              # 2. keep what scope and calibrate wrote
    intentlm model prepare                                   #    serve it

Step 1 writes training/demo/: the LoRA adapter in bf16 (half the size of PEFT's fp32 file), its config,
the run's intentlm.json and, for a run with retrieved examples, its examples.json. The typicality
statistics and the calibration are computed on the prepared demo, not taken from the run: the server serves
the adapter merged onto the prepared base in bf16, whose hidden states differ slightly from the training
process's merged model. Step 2 copies the prepared demo's card and
`typicality.npz` back into training/demo/. The test figures are measured afterwards, once, with
`intentlm eval` on the prepared demo (as it is served).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from service.examples import EXAMPLES_FILE
from service.modelcard import ModelCard, demo_model_dir, read_card, write_card
from service.typicality import STATS_FILE
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


def export_run(model_dir: Path) -> None:
    card = read_card(model_dir)
    if card is None:
        sys.exit(f"{model_dir} has no intentlm.json: not an intentlm train output")
    if card.data is not None:
        card.data.file = "smarthome_train.json, train side of `intentlm data split --test-ratio 0.1 --seed 42`"
    DEMO_DIR.mkdir(exist_ok=True)
    export_adapter(model_dir / "adapter", DEMO_DIR)
    write_card(DEMO_DIR, card)
    (DEMO_DIR / STATS_FILE).unlink(missing_ok=True)  # the previous adapter's: step 2 brings this one's
    (DEMO_DIR / EXAMPLES_FILE).unlink(missing_ok=True)
    if (model_dir / EXAMPLES_FILE).is_file():  # trained with --retrieved_examples: its prompts need them
        shutil.copyfile(model_dir / EXAMPLES_FILE, DEMO_DIR / EXAMPLES_FILE)
    print(f"wrote {DEMO_DIR}")


def adopt_prepared(prepared: Path) -> None:
    card = read_card(prepared)
    if card is None or not (prepared / STATS_FILE).is_file():
        sys.exit(f"{prepared} has no intentlm.json or {STATS_FILE}: run `intentlm model prepare` and "
                 "`intentlm model scope` first")
    fields = card.model_dump()
    fields.pop("adapter_sha256", None)  # prepare's own record of what it merged
    write_card(DEMO_DIR, ModelCard(**fields))
    shutil.copyfile(prepared / STATS_FILE, DEMO_DIR / STATS_FILE)
    print(f"copied the card and {STATS_FILE} of {prepared} into {DEMO_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", help="an `intentlm train --lora_dim N` output directory")
    parser.add_argument("--adopt", action="store_true", help="copy the prepared demo's card and statistics back")
    args = parser.parse_args()
    if args.adopt == (args.run is not None):
        parser.error("give either a run directory or --adopt")
    if args.adopt:
        adopt_prepared(demo_model_dir())
    else:
        export_run(args.run)


if __name__ == "__main__":
    main()
