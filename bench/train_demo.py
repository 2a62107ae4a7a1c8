"""Make a finished `intentlm train` run the bundled demo model (see training/demo/README.md).

    .venv/bin/python bench/train_demo.py runs/study/MODEL        # 1. export the run into training/demo/
    intentlm model prepare                                      #    merge it: $INTENTLM_HOME/models/smarthome-demo
    .venv/bin/python bench/train_demo.py --scope TRAIN.json      # 2. typicality statistics of the prepared demo
    intentlm eval --model $INTENTLM_HOME/models/smarthome-demo --data VAL.json --calibrate
    .venv/bin/python bench/train_demo.py --adopt                 # 3. keep what --scope and --calibrate wrote
    intentlm model prepare                                      #    serve it

Step 1 writes training/demo/: the LoRA adapter in bf16 (half the size of PEFT's fp32 file), its config and
the run's intentlm.json; it removes the previous adapter's typicality.npz. Step 2 computes the typicality
statistics on the prepared demo, not in the training process: the server serves the adapter merged onto the
prepared base in bf16, whose hidden states differ slightly from the training process's merged model. It writes
them (typicality.npz: the intents' means, the precision matrix and the cross-fitted training scores) into the
prepared demo with the out-of-scope threshold they support (the card's typicality_threshold), as `intentlm train`
does for its own output (training.trainer.typicality_statistics and typicality_threshold). `intentlm eval
--calibrate` then fits the confidence temperature and refines the threshold on the validation side. Step 3
copies the prepared demo's card and typicality.npz back into training/demo/. The test figures are measured
afterwards, once, with `intentlm eval` on the prepared demo (as it is served).

--demo-dir and --prepared point the steps at other directories than training/demo/ and the prepared demo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.modelcard import STATS_FILE, ModelCard, demo_model_dir, read_card, write_card
from training.basemodel import DEMO_DIR


def export_adapter(adapter_dir: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
        target / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct"  # merged onto the prepared base, never downloaded
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_run(model_dir: Path, demo_dir: Path) -> None:
    card = read_card(model_dir)
    if card is None:
        sys.exit(f"{model_dir} has no intentlm.json: not an intentlm train output")
    if not (model_dir / "adapter" / "adapter_model.safetensors").is_file():
        sys.exit(f"{model_dir} has no adapter/: train the demo with --lora_dim N")
    if card.data is not None:
        card.data.file = "smarthome_train.json, train side of `intentlm data split --test-ratio 0.1 --seed 42`"
    demo_dir.mkdir(parents=True, exist_ok=True)
    export_adapter(model_dir / "adapter", demo_dir)
    write_card(demo_dir, card)
    (demo_dir / STATS_FILE).unlink(missing_ok=True)  # the previous adapter's: steps 2 and 3 bring this one's
    print(f"wrote {demo_dir}")


def scope_prepared(prepared: Path, data: Path) -> None:
    """What `intentlm train` writes for the out-of-scope score, computed on the prepared model from ``data``."""
    from service.dataset import DatasetError, load_dataset
    from training.trainer import typicality_statistics, typicality_threshold

    card = read_card(prepared)
    if card is None:
        sys.exit(f"{prepared} has no intentlm.json: run `intentlm model prepare` first")
    try:
        records = load_dataset(data)
    except DatasetError as exc:
        sys.exit(str(exc))
    statistics = typicality_statistics(prepared, records, card)
    if statistics is None:
        sys.exit(f"{data}: fewer than two in-scope records; the typicality score needs more")
    card.typicality_threshold = typicality_threshold(statistics)
    path = statistics.save(prepared)
    write_card(prepared, card)
    print(
        f"{path}: typicality statistics of {len(statistics.intents)} intents, {len(statistics.held_out)} "
        f"cross-fitted training scores; typicality threshold {card.typicality_threshold}"
    )


def adopt_prepared(prepared: Path, demo_dir: Path) -> None:
    card = read_card(prepared)
    if card is None or not (prepared / STATS_FILE).is_file():
        sys.exit(
            f"{prepared} has no intentlm.json or {STATS_FILE}: run `intentlm model prepare` and "
            "`bench/train_demo.py --scope` first"
        )
    fields = card.model_dump()
    fields.pop("adapter_sha256", None)  # prepare's own record of what it merged
    write_card(demo_dir, ModelCard(**fields))
    shutil.copyfile(prepared / STATS_FILE, demo_dir / STATS_FILE)
    print(f"copied the card and {STATS_FILE} of {prepared} into {demo_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", help="step 1: an `intentlm train --lora_dim N` output directory")
    parser.add_argument(
        "--scope",
        type=Path,
        metavar="TRAIN.json",
        help="step 2: write the prepared demo's typicality statistics and threshold from these records",
    )
    parser.add_argument(
        "--adopt", action="store_true", help="step 3: copy the prepared demo's card and statistics back"
    )
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help="the bundled demo's files [training/demo]")
    parser.add_argument(
        "--prepared", type=Path, default=None, help="the prepared demo [$INTENTLM_HOME/models/smarthome-demo]"
    )
    args = parser.parse_args()
    if sum((args.run is not None, args.scope is not None, args.adopt)) != 1:
        parser.error("give one of: a run directory, --scope TRAIN.json, --adopt")
    prepared = args.prepared or demo_model_dir()
    if args.scope is not None:
        scope_prepared(prepared, args.scope)
    elif args.adopt:
        adopt_prepared(prepared, args.demo_dir)
    else:
        export_run(args.run, args.demo_dir)


if __name__ == "__main__":
    main()
