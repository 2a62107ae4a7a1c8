"""Benchmark: `intentlm eval --model` against PAI's offline evaluation script, same model, same data.

    .venv/bin/python bench/eval_bench.py [--model DIR] [--data FILE] [--subset N]

The reference script (bench/reference_eval.py: verbatim but for the device and the paths) runs
transformers ``generate`` one row at a time; intentlm runs the whole file through vLLM in one
batched call. For identical figures both must decode alike, so the comparison runs intentlm
``--free-form`` (greedy) with the reference script's system prompt; the constrained figures
(the default, with the card's prompt) are reported beside them. Both are timed end to end as a
user waits for them (process start, model load, generation, scoring).

The reference is slow on CPU, so it runs on the first ``--subset`` rows, and intentlm runs on the
same subset (like for like) and on the whole file. Prints a Markdown block for BENCHMARKS.md.
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

REPO = Path(__file__).resolve().parent.parent
# As in the tests: prepared models live in the checkout's cache unless the caller chose one.
os.environ.setdefault("INTENTLM_HOME", str(REPO / ".cache" / "intentlm"))
REFERENCE_SYSTEM_PROMPT = ("You are an intent recognition expert. You can recognize an intent based on user "
                           "questions and return the corresponding intent and parameters. ")


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
    train = json.loads((REPO.parent / "shared" / "data" / "smarthome_train.json").read_text())
    write_card(model, ModelCard(base_model=base_model_dir().name,
                                intents=sorted({c.name for r in train for c in parse(r["output"])})))
    return model


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    return wall, done.stdout


def reference_run(model: Path, data: Path) -> tuple[float, tuple[float, float]]:
    wall, out = timed([sys.executable, str(REPO / "bench" / "reference_eval.py"), str(model), str(data)])
    intent = float(re.search(r"Intent recognition accuracy: ([\d.]+)", out).group(1))
    params = float(re.search(r"Parameter recognition accuracy: ([\d.]+)", out).group(1))
    return wall, (intent, params)


def intentlm_run(model: Path, data: Path, out: Path, *extra: str) -> tuple[float, tuple[float, float]]:
    wall, _ = timed([str(REPO / ".venv" / "bin" / "intentlm"), "eval", "--model", str(model), "--data", str(data),
                     "--report", str(out), *extra])
    reference = json.loads((out / "metrics.json").read_text())["metrics"]["reference"]
    return wall, (reference["intent_accuracy"], reference["parameter_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "smarthome_test.json")
    parser.add_argument("--subset", type=int, default=8, help="rows the reference script runs on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or default_model(work)
        records = json.loads(args.data.read_text())
        subset = work / "subset.json"
        subset.write_text(json.dumps(records[: args.subset]))
        free = ["--free-form", "--system-prompt", REFERENCE_SYSTEM_PROMPT]

        ref_wall, ref_figures = reference_run(model, subset)
        sub_wall, sub_figures = intentlm_run(model, subset, work / "sub", *free)
        full_wall, full_figures = intentlm_run(model, args.data, work / "full", *free)
        con_wall, con_figures = intentlm_run(model, args.data, work / "constrained")

    n_sub, n_full = min(args.subset, len(records)), len(records)
    ref_per_row = ref_wall / n_sub
    fmt = lambda f: f"{100 * f[0]:.1f}% / {100 * f[1]:.1f}%"  # noqa: E731
    print(f"""Model: `{model}`; data: `{args.data}` ({n_full} records); reference subset: first {n_sub} rows.

| run | records | wall time | per record | intent / parameter accuracy (reference figures) |
|---|---|---|---|---|
| reference script (transformers, one row at a time) | {n_sub} | {ref_wall:.1f} s | {ref_per_row:.2f} s | {fmt(ref_figures)} |
| `intentlm eval --model --free-form` (same prompt) | {n_sub} | {sub_wall:.1f} s | {sub_wall / n_sub:.2f} s | {fmt(sub_figures)} |
| `intentlm eval --model --free-form` (same prompt) | {n_full} | {full_wall:.1f} s | {full_wall / n_full:.3f} s | {fmt(full_figures)} |
| `intentlm eval --model` (constrained, card prompt) | {n_full} | {con_wall:.1f} s | {con_wall / n_full:.3f} s | {fmt(con_figures)} |

- Same subset, end to end: intentlm is **{ref_wall / sub_wall:.1f}×** faster.
- Whole file: the reference at its measured {ref_per_row:.2f} s/row would take ~{ref_per_row * n_full:.0f} s;
  intentlm took {full_wall:.1f} s: **{ref_per_row * n_full / full_wall:.0f}×** (extrapolated baseline).
- Reference figures identical on the subset: **{ref_figures == sub_figures}** ({fmt(ref_figures)} vs {fmt(sub_figures)}).""")


if __name__ == "__main__":
    main()
