#!/bin/bash
# One run of the recipe study (bench/accuracy.md): train on the train side of the split, evaluate on
# the validation side with `intentlm eval` (constrained decoding, as served), print the split figures.
#
#   bash bench/recipe_run.sh NAME [intentlm train flags ...]
#
# Needs runs/demo/{train,val}.json:
#   intentlm data split ../shared/data/smarthome_train.json --test-ratio 0.1 --seed 42 \
#       -o runs/demo/train.json --test-out runs/demo/val.json
# Writes runs/study/NAME (model), NAME.log (training), NAME.val/ (eval report), NAME.eval.log.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} INTENTLM_HOME=${INTENTLM_HOME:-$PWD/.cache/intentlm}
mkdir -p runs/study
( time .venv/bin/intentlm train --data runs/demo/train.json --output "runs/study/$name" \
    --logging_steps 5 --save_steps 1000 "$@" ) > "runs/study/$name.log" 2>&1
( time .venv/bin/intentlm eval --model "runs/study/$name" --data runs/demo/val.json \
    --report "runs/study/$name.val" ) > "runs/study/$name.eval.log" 2>&1
.venv/bin/python bench/split_figures.py "runs/study/$name.val"
