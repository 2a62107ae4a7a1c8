"""Out-of-scope validation without the test file: hold three intents out of training (bench/accuracy.md §4).

    .venv/bin/python bench/heldout_oos.py runs/demo/train.json runs/demo/val.json runs/heldout

The smart-home data has no out-of-scope examples outside `smarthome_oos_test.json`, and choosing an
out-of-scope method on that file would be tuning on the test. Instead, every record with a call to
one of HELD_OUT (fixed before any run, not chosen by result) leaves the training data; their
single-call records become out-of-scope validation examples (answer `oos()`) for a model that never
saw those intents. Writes, in OUT_DIR:

  train.json           the training side without the held-out intents
  val.json             the validation side without them (in-scope: calibration, in-scope cost)
  val_plus_oos.json    val.json + the held-out intents' single-call records from both sides, as oos()
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.intents import parse  # noqa: E402

HELD_OUT = ("calendar_set", "iot_cleaning", "weather_query")


def intents_of(record: dict) -> set[str]:
    return {call.name for call in parse(record["output"])}


def main(train: str, val: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sides = {name: json.loads(Path(path).read_text()) for name, path in (("train", train), ("val", val))}
    kept = {name: [r for r in records if not intents_of(r) & set(HELD_OUT)] for name, records in sides.items()}
    oos = [{"instruction": r["instruction"], "output": "oos()"} for records in sides.values() for r in records
           if len(parse(r["output"])) == 1 and intents_of(r) & set(HELD_OUT)]
    files = {"train.json": kept["train"], "val.json": kept["val"], "val_plus_oos.json": kept["val"] + oos}
    for name, records in files.items():
        (out / name).write_text(json.dumps(records, indent=1))
        print(f"{out / name}: {len(records)} records")


if __name__ == "__main__":
    main(*sys.argv[1:])
