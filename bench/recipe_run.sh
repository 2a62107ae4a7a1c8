#!/bin/bash
# One recipe run: train on the train side of a split, evaluate on its validation side with `intentlm eval`
# (constrained decoding, as served), print the single-call and two-call figures (bench/split_figures.py).
# The recipe decisions of docs/decisions.md were made with it, and the demo adapter is rebuilt with it
# (training/demo/README.md).
#
# usage: bash bench/recipe_run.sh NAME [intentlm train flags ...]
#
# SPLIT (default runs/split2, the clean split) holds train.json and val.json:
#   intentlm data split data/smarthome/smarthome_train.json --test-ratio 0.1 --seed 42 \
#       -o runs/split2/train.json --test-out runs/split2/val.json
# Writes, under STUDY (default runs/study): NAME (model), NAME.log (training), NAME.val/ (eval report),
# NAME.eval.log.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = --help ] || [ "$1" = -h ]; then
    sed -n '2,13s/^# \{0,1\}//p' "$0"
    [ $# -ge 1 ] && exit 0 || exit 2
fi
cd "$(dirname "$0")/.."
name=$1; shift
split=${SPLIT:-runs/split2}
study=${STUDY:-runs/study}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} INTENTLM_HOME=${INTENTLM_HOME:-$PWD/.cache/intentlm}
mkdir -p "$study"
( time .venv/bin/intentlm train --data "$split/train.json" --output "$study/$name" \
    --logging_steps 5 --save_steps 1000 "$@" ) > "$study/$name.log" 2>&1
( time .venv/bin/intentlm eval --model "$study/$name" --data "$split/val.json" \
    --report "$study/$name.val" ) > "$study/$name.eval.log" 2>&1
.venv/bin/python bench/split_figures.py "$study/$name.val"
