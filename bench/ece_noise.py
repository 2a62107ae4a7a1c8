"""How large an ECE a perfectly calibrated model would show on a report's records (bench/accuracy.md §24).

For each eval report, the in-scope records' confidences are kept and ``eval.calibration.ece_noise`` draws their
correctness as if the model were perfectly calibrated (right with probability = its confidence); the spread of
those draws' ECE is the noise floor of the figure on that many records. New reports print the same figures in
their calibration line; this script reads reports written before they did.

    .venv/bin/python bench/ece_noise.py runs/acc/demo4.test runs/acc/demo4.multi
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.calibration import ece_noise, expected_calibration_error, from_rows
from eval.report import read_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="intentlm eval --report directories")
    parser.add_argument("--oos-label", default="oos")
    args = parser.parse_args()
    for report in args.reports:
        rows = read_predictions(report)
        c = from_rows(rows, args.oos_label)
        if c is None:
            print(f"{report}: no confidences")
            continue
        mean, high = ece_noise(c.in_scope)
        print(f"{report}: {len(c.in_scope)} in-scope records, ECE "
              f"{expected_calibration_error(c.in_scope, c.in_scope_correct):.3f}; perfectly calibrated: "
              f"mean {mean:.3f}, 95th percentile {high:.3f}")


if __name__ == "__main__":
    main()
