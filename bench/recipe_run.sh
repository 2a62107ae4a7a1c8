#!/bin/bash
# One run of the recipe study (bench/accuracy.md): train on the train side of the split, evaluate on
# the validation side with `intentlm eval` (constrained decoding, as served), print the split figures.
#
#   bash bench/recipe_run.sh NAME [intentlm train flags ...]
#
# SPLIT (default runs/split2, the clean split of bench/accuracy.md §12) holds train.json and val.json:
#   intentlm data split ../shared/data/smarthome_train.json --test-ratio 0.1 --seed 42 \
#       -o runs/split2/train.json --test-out runs/split2/val.json
# (§1–§11 ran with SPLIT=runs/demo, the split that command made before §12.)
# Writes runs/study/NAME (model), NAME.log (training), NAME.val/ (eval report), NAME.eval.log.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
split=${SPLIT:-runs/split2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} INTENTLM_HOME=${INTENTLM_HOME:-$PWD/.cache/intentlm}
mkdir -p runs/study
( time .venv/bin/intentlm train --data "$split/train.json" --output "runs/study/$name" \
    --logging_steps 5 --save_steps 1000 "$@" ) > "runs/study/$name.log" 2>&1
( time .venv/bin/intentlm eval --model "runs/study/$name" --data "$split/val.json" \
    --report "runs/study/$name.val" ) > "runs/study/$name.eval.log" 2>&1
.venv/bin/python bench/split_figures.py "runs/study/$name.val"
