"""Benchmark: `intentlm eval --model` against PAI's offline evaluation script, same model, same data.

    .venv/bin/python bench/eval_bench.py [--model DIR] [--data FILE] [--subset N] [--reference-script PATH]

The baseline is the user's own copy of the reference script (the "Evaluate a model offline" code of
PAI's LLM intent recognition guide; the project does not ship it). The benchmark runs it as
``python PATH MODEL DATA``, so the copy must read its model directory from ``sys.argv[1]`` and its
test file from ``sys.argv[2]`` (the guide hard-codes ``/mnt/workspace/...`` paths), and set
``device`` for the machine ("cpu" here): those three lines and an ``import sys``, nothing else.
It must print the guide's two lines, ``Intent recognition accuracy: X`` and ``Parameter recognition accuracy: Y``.
Without ``--reference-script`` only intentlm's side runs and the output says the baseline was skipped.

The reference script runs transformers ``generate`` one row at a time; intentlm runs the whole
file through vLLM in one batched call. For identical figures both must decode alike, so the
comparison runs intentlm ``--free-form`` (greedy) with the reference script's system prompt; the
constrained figures (the default, with the card's prompt) are reported beside them. Both are timed end to end as a
user waits for them (process start, model load, generation, scoring).

The reference is slow on CPU, so it runs on the first ``--subset`` rows, and intentlm runs on the
same subset (like for like) and on the whole file; without the baseline the subset run, which only
serves that comparison, is skipped too. Prints a Markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data" / "smarthome"
# As in the tests: prepared models live in the checkout's cache unless the caller chose one.
os.environ.setdefault("INTENTLM_HOME", str(REPO / ".cache" / "intentlm"))
REFERENCE_SYSTEM_PROMPT = (
    "You are an intent recognition expert. You can recognize an intent based on user "
    "questions and return the corresponding intent and parameters. "
)


def default_model(workdir: Path) -> Path:
    """The demo model when it has been prepared, else the base model with the smart-home intents on its card."""
    sys.path.insert(0, str(REPO))
    from service.intents import parse
    from service.modelcard import ModelCard, base_model_dir, demo_model_dir, write_card

    if (demo_model_dir() / "config.json").is_file():
        return demo_model_dir()
    model = workdir / "base-smarthome"
    model.mkdir()
    for item in base_model_dir().iterdir():
        if item.name != "intentlm.json":
            (model / item.name).symlink_to(item)
    train = json.loads((DATA_DIR / "smarthome_train.json").read_text())
    write_card(
        model,
        ModelCard(
            base_model=base_model_dir().name, intents=sorted({c.name for r in train for c in parse(r["output"])})
        ),
    )
    return model


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    return wall, done.stdout


def reference_run(script: Path, model: Path, data: Path) -> tuple[float, tuple[float, float]]:
    """The user's copy of the reference script, timed as a subprocess; its two printed figures."""
    if "sys.argv" not in script.read_text():
        sys.exit(
            f"{script} does not read sys.argv: make its model path sys.argv[1] and its test file sys.argv[2] "
            "(see bench/eval_bench.py's docstring)"
        )
    wall, out = timed([sys.executable, str(script), str(model), str(data)])
    intent = re.search(r"Intent recognition accuracy: ([\d.]+)", out)
    params = re.search(r"Parameter recognition accuracy: ([\d.]+)", out)
    if intent is None or params is None:
        sys.exit(f"{script} did not print the two accuracy lines of the reference script:\n{out[-2000:]}")
    return wall, (float(intent.group(1)), float(params.group(1)))


def intentlm_run(model: Path, data: Path, out: Path, *extra: str) -> tuple[float, tuple[float, float]]:
    wall, _ = timed(
        [
            str(REPO / ".venv" / "bin" / "intentlm"),
            "eval",
            "--model",
            str(model),
            "--data",
            str(data),
            "--report",
            str(out),
            *extra,
        ]
    )
    reference = json.loads((out / "metrics.json").read_text())["metrics"]["reference"]
    return wall, (reference["intent_accuracy"], reference["parameter_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path, default=DATA_DIR / "smarthome_test.json")
    parser.add_argument("--subset", type=int, default=8, help="rows the reference script runs on")
    parser.add_argument(
        "--reference-script",
        type=Path,
        metavar="PATH",
        help="your copy of the reference evaluation script, reading the model from sys.argv[1] and "
        "the test file from sys.argv[2] (see the module docstring); without it, no baseline",
    )
    args = parser.parse_args()
    script = args.reference_script.resolve() if args.reference_script else None
    if script is not None and not script.is_file():
        sys.exit(f"--reference-script {script}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or default_model(work)
        records = json.loads(args.data.read_text())
        subset = work / "subset.json"
        subset.write_text(json.dumps(records[: args.subset]))
        free = ["--free-form", "--system-prompt", REFERENCE_SYSTEM_PROMPT]

        if script is not None:
            ref_wall, ref_figures = reference_run(script, model, subset)
            sub_wall, sub_figures = intentlm_run(model, subset, work / "sub", *free)
        full_wall, full_figures = intentlm_run(model, args.data, work / "full", *free)
        con_wall, con_figures = intentlm_run(model, args.data, work / "constrained")

    n_sub, n_full = min(args.subset, len(records)), len(records)
    free_label = "`intentlm eval --model --free-form` (same prompt)"
    con_label = "`intentlm eval --model` (constrained, card prompt)"
    table = [
        "| run | records | wall time | per record | intent / parameter accuracy (reference figures) |",
        "|---|---|---|---|---|",
    ]
    if script is None:
        table += [row(free_label, n_full, full_wall, full_figures, 3), row(con_label, n_full, con_wall, con_figures, 3)]
        print(f"Model: `{model}`; data: `{args.data}` ({n_full} records).\n")
        print("\n".join(table))
        print(
            "\n- Baseline skipped: no `--reference-script` given, so neither the reference script nor intentlm's "
            "like-for-like\n  subset run ran (pass your copy of the script to compare)."
        )
        return
    ref_per_row = ref_wall / n_sub
    table += [
        row("reference script (transformers, one row at a time)", n_sub, ref_wall, ref_figures, 2),
        row(free_label, n_sub, sub_wall, sub_figures, 2),
        row(free_label, n_full, full_wall, full_figures, 3),
        row(con_label, n_full, con_wall, con_figures, 3),
    ]
    print(f"Model: `{model}`; data: `{args.data}` ({n_full} records); reference subset: first {n_sub} rows.")
    print(f"Reference script: `{script}`.\n")
    print("\n".join(table))
    print(f"""
- Same subset, end to end: intentlm is **{ref_wall / sub_wall:.1f}×** faster.
- Whole file: the reference at its measured {ref_per_row:.2f} s/row would take ~{ref_per_row * n_full:.0f} s;
  intentlm took {full_wall:.1f} s: **{ref_per_row * n_full / full_wall:.0f}×** (extrapolated baseline).
- Reference figures identical on the subset: **{ref_figures == sub_figures}** \
({percent(ref_figures)} vs {percent(sub_figures)}).""")


def percent(figures: tuple[float, float]) -> str:
    return f"{100 * figures[0]:.1f}% / {100 * figures[1]:.1f}%"


def row(label: str, records: int, wall: float, figures: tuple[float, float], digits: int) -> str:
    """One line of the Markdown table (per-record time to ``digits`` decimals)."""
    return f"| {label} | {records} | {wall:.1f} s | {wall / records:.{digits}f} s | {percent(figures)} |"


if __name__ == "__main__":
    main()
