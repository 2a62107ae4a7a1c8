#!/bin/bash
# One out-of-scope run of bench/accuracy.md §4: train without the held-out intents, calibrate the
# confidence and threshold on in-scope validation, score in-scope + held-out-as-oos records.
#
#   bash bench/heldout_run.sh NAME DATA [intentlm train flags ...]
#
# Needs runs/heldout/ from bench/heldout_oos.py; HELDOUT names another folder with the same
# val.json and val_plus_oos.json (bench/retrieved_examples.py writes one). Writes runs/heldout/NAME
# (model), NAME.log, NAME.cal/ and NAME.oos/ (eval reports); prints the out-of-scope figures.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; data=$2; shift 2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} INTENTLM_HOME=${INTENTLM_HOME:-$PWD/.cache/intentlm}
out=runs/heldout/$name; dir=${HELDOUT:-runs/heldout}
( time .venv/bin/intentlm train --data "$data" --output "$out" --logging_steps 5 --save_steps 1000 "$@" ) \
    > "$out.log" 2>&1
.venv/bin/intentlm eval --model "$out" --data "$dir/val.json" --calibrate --report "$out.cal" > "$out.eval.log" 2>&1
.venv/bin/intentlm eval --model "$out" --data "$dir/val_plus_oos.json" --report "$out.oos" >> "$out.eval.log" 2>&1
.venv/bin/python -c "import json, sys; print(sys.argv[1], json.load(open(sys.argv[1]))['metrics']['out_of_scope'])" \
    "$out.oos/metrics.json"
