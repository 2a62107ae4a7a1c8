"""Training speed: `intentlm train`'s step against a naive fine-tuning step, in the same run.

    .venv/bin/python bench/train_bench.py [--records 32] [--data data/smarthome/smarthome_train.json]

Each variant trains (forward, backward, AdamW step every `gradient_accumulation_steps`) on the SAME
first N records of the smart-home data, and the time is extrapolated to one epoch of the file:

- naive:    the reference's defaults (QLoRA 4-bit, lora_dim 32, batch 1 x accumulation 8), every record
            right-padded to seq_length 128, loss (and the vocabulary projection) on the whole sequence;
- intentlm-defaults: the same knobs through intentlm's collator: no padding (batch 1), loss and
            vocabulary projection on the answer only;
- intentlm-demo: the settings of the bundled demo model (LoRA r16, bf16, batch 16 length-grouped).

tokens/s counts real (non-pad) tokens, so the figure is comparable across variants. Prints a
Markdown table for BENCHMARKS.md. A fraction of an epoch is measured (the machine is shared): the
per-epoch time is extrapolated, as the table says.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from service.modelcard import base_model_dir
from training.config import resolve_config
from training.trainer import IGNORE_INDEX, AnswerOnlyCollator, Example, load_model, plan_training

DATA = Path(__file__).resolve().parents[1] / "data" / "smarthome" / "smarthome_train.json"


def naive_batch(examples: list[Example], seq_length: int, pad: int) -> dict[str, Any]:
    """Right-padded to seq_length, labels = the whole sequence (pads ignored): the textbook SFT step."""
    ids = torch.full((len(examples), seq_length), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[row, : len(e.input_ids)] = 1
    labels = ids.masked_fill(attention == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def measure(name: str, overrides: dict[str, Any], naive: bool, data: Path, records: int) -> dict[str, Any]:
    config, explicit = resolve_config(flag_values=overrides)
    plan = plan_training(data, Path("/tmp/train-bench/model"), config, explicit, base_model_dir())
    examples = plan.examples[:records]
    model = load_model(plan)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    collate = AnswerOnlyCollator(pad_token_id=2)
    size = config.per_device_train_batch_size
    # intentlm batches records of similar length (length-grouped sampler); the naive loop takes them as they come
    ordered = examples if naive else sorted(examples, key=lambda e: len(e.input_ids))
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    warm = collate([{"input_ids": e.input_ids, "answer_len": e.answer_len} for e in batches[0]])
    model(**warm).loss.backward()  # first-call setup (kernel selection) is not part of an epoch's cost
    optimizer.zero_grad()
    tokens, started = 0, time.monotonic()
    for step, batch in enumerate(batches, start=1):
        inputs = (
            naive_batch(batch, config.seq_length, 2)
            if naive
            else collate([{"input_ids": e.input_ids, "answer_len": e.answer_len} for e in batch])
        )
        (model(**inputs).loss / config.gradient_accumulation_steps).backward()
        tokens += int(inputs["attention_mask"].sum())
        if step % config.gradient_accumulation_steps == 0 or step == len(batches):
            optimizer.step()
            optimizer.zero_grad()
    seconds = time.monotonic() - started
    per_epoch = seconds / len(examples) * len(plan.examples)
    return {
        "variant": name,
        "records": len(examples),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "epoch_s": per_epoch,
        "mode": config.mode,
        "batch": f"{size}x{config.gradient_accumulation_steps}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--records", type=int, default=32)
    args = parser.parse_args()
    variants = [
        ("naive (reference defaults, padded to 128, whole-sequence loss)", {}, True),
        ("intentlm train, reference defaults", {}, False),
        (
            "intentlm train, demo settings (LoRA r16 bf16, batch 16)",
            {
                "lora_dim": 16,
                "lora_alpha": 32,
                "load_in_4bit": False,
                "per_device_train_batch_size": 16,
                "gradient_accumulation_steps": 1,
            },
            False,
        ),
    ]
    rows = [measure(name, overrides, naive, args.data, args.records) for name, overrides, naive in variants]
    base = rows[0]["epoch_s"]
    print(
        f"threads: {torch.get_num_threads()}; {args.records} records per variant, epoch = {args.data.name} "
        "(extrapolated)\n"
    )
    print("| variant | mode | batch | tokens/s | s per epoch (extrapolated) | speed-up per epoch |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['mode']} | {row['batch']} | {row['tokens_per_s']:.0f} | "
            f"{row['epoch_s']:.0f} | {base / row['epoch_s']:.1f}x |"
        )


if __name__ == "__main__":
    main()
