"""How large an ECE a perfectly calibrated model would show on a report's records (bench/accuracy.md §24).

For each eval report, the in-scope records' confidences are kept and their correctness is drawn as if the model
were perfectly calibrated (right with probability = its confidence); the ECE of each draw (eval.calibration,
the report's bins) gives the noise floor of the figure on that many records. An observed ECE inside that
spread is not evidence of miscalibration.

    .venv/bin/python bench/ece_noise.py runs/acc/demo4.test runs/acc/demo4.multi [--draws 2000]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from eval.calibration import expected_calibration_error, from_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="intentlm eval --report directories")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--oos-label", default="oos")
    args = parser.parse_args()
    rng = random.Random(0)
    for report in args.reports:
        rows = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
        c = from_rows(rows, args.oos_label)
        if c is None:
            print(f"{report}: no confidences")
            continue
        observed = expected_calibration_error(c.in_scope, c.in_scope_correct)
        draws = sorted(expected_calibration_error(c.in_scope, [rng.random() < p for p in c.in_scope])
                       for _ in range(args.draws))
        print(f"{report}: {len(c.in_scope)} in-scope records, ECE {observed:.3f}; perfectly calibrated: "
              f"mean {sum(draws) / len(draws):.3f}, 95th percentile {draws[int(0.95 * len(draws))]:.3f}, "
              f"{sum(d >= observed for d in draws) / len(draws):.0%} of draws at least as large")


if __name__ == "__main__":
    main()
