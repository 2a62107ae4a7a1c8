"""HWU64's other intents in the data format: annotated requests for a first training stage (bench/accuracy.md §27).

    .venv/bin/python bench/hwu64_other_intents.py RAW_DIR OUT.json [--exclude FILE ...]

RAW_DIR holds one ``<intent>.txt`` per HWU64 intent: the ``answer_annotation`` column of
``CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1/trainset/<intent>.csv``
of github.com/xliuhw/NLU-Evaluation-Data @ 4356cd6 (Liu et al., IWSDS 2019, CC BY 4.0), one annotated request
per line. The conversion is the one ../shared/data/README.md gives for the smart-home files: the instruction is
the annotation without its brackets, lower-cased, whitespace collapsed; the arguments are the ``[slot : value]``
values in order (commas in a value become spaces, slot names dropped). Requests whose text is in an ``--exclude``
file (normalised the same way: the smart-home files, so that no request of theirs is trained on twice or
evaluated after being trained on) and repeated requests are dropped.

Which intents go in is the caller's choice of files: the 12 smart-home intents and the 15 of
``smarthome_oos_test.json`` must stay out, or the out-of-scope test would hold intents the model has seen.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.intents import Call, format_calls, try_parse  # noqa: E402
from training.data.dataset import Record, load_dataset, save_dataset  # noqa: E402

SLOT = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def convert(intent: str, annotation: str) -> Record | None:
    """The record of one annotated request; None when its brackets or its output do not parse (an empty value)."""
    values = [m.group(2) for m in SLOT.finditer(annotation)]
    instruction = normalise(SLOT.sub(lambda m: m.group(2), annotation))
    if "[" in instruction or "]" in instruction or not instruction:
        return None
    output = format_calls([Call(intent, tuple(normalise(v.replace(",", " ")) for v in values))])
    return Record(instruction=instruction, output=output) if try_parse(output) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--exclude", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    seen = {normalise(r.instruction) for path in args.exclude for r in load_dataset(path)}
    records, counts = [], {}
    for path in sorted(args.raw.glob("*.txt")):
        kept = dropped = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            record = convert(path.stem, line) if line.strip() else None
            if record is None or record.instruction in seen:
                dropped += line.strip() != ""
                continue
            seen.add(record.instruction)
            records.append(record)
            kept += 1
        counts[path.stem] = {"kept": kept, "dropped": dropped}
    save_dataset(args.out, records)
    with_args = sum("()" not in r.output for r in records)
    print(json.dumps({"records": len(records), "with_arguments": with_args, "per_intent": counts}, indent=1))


if __name__ == "__main__":
    main()
