"""Per-request cost of the familiarity score, beside the per-request grammar the server already builds.

    .venv/bin/python bench/familiarity_bench.py [--repeat 20]

Scores every utterance of smarthome_test.json (with its gold calls as the answer) against the
vocabulary of smarthome_train.json, the way the server does after each answer, and builds the same
utterances' decoding regex (``service.intents.decoding_regex``, the per-request grammar of an
``args_from_text`` model) in the same run, as the baseline. Prints the median and p99 per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from service.intents import decoding_regex, parse
from service.scope import Familiarity, build_vocabulary

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def per_call_us(fn, items, repeat: int) -> list[float]:
    times = []
    for item in items:
        start = time.perf_counter()
        for _ in range(repeat):
            fn(item)
        times.append((time.perf_counter() - start) / repeat * 1e6)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    train = json.loads((DATA / "smarthome_train.json").read_text())
    test = [(r["instruction"], parse(r["output"])) for r in json.loads((DATA / "smarthome_test.json").read_text())]
    start = time.perf_counter()
    familiarity = Familiarity(build_vocabulary((r["instruction"], parse(r["output"])) for r in train))
    built_ms = (time.perf_counter() - start) * 1000
    intents = sorted({call.name for _, calls in test for call in calls})
    rows = {
        "familiarity score": per_call_us(lambda item: familiarity.score(*item), test, args.repeat),
        "decoding regex (baseline)": per_call_us(lambda item: decoding_regex(intents, item[0]), test, args.repeat),
    }
    print(f"vocabulary of {len(train)} records built in {built_ms:.1f} ms "
          f"({len(familiarity.context)} context words, {len(familiarity.anywhere)} in all)")
    for name, times in rows.items():
        print(f"{name:28s} p50 {statistics.median(times):7.1f} us   p99 {times[int(0.99 * len(times))]:7.1f} us")
    ratio = statistics.median(rows["decoding regex (baseline)"]) / statistics.median(rows["familiarity score"])
    print(f"the familiarity score costs 1/{ratio:.0f} of the per-request grammar build")


if __name__ == "__main__":
    main()
