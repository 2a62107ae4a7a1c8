"""Test oracle: the scoring loop of PAI's offline evaluation script, verbatim.

Copied from ``reference/pai-llm-intent-recognition.txt`` ("Evaluate a model offline"); only the
model call is replaced by a list of given predictions, so ``eval.metrics`` can be checked against
the very code whose figures it claims to reproduce. A row where the script raises is reported
as the exception, because the script itself would stop there.
"""

from __future__ import annotations


def reference_script_figures(test_data: list[dict], preds: list[str]) -> tuple[float, float]:
    count = 0
    ecount = 0
    for i, pred in zip(test_data[:], preds):
        gold = i['output']
        gold = gold.split(';')[0] if ';' in gold else gold
        if gold.split('(')[0] == pred.split('(')[0]:
            count += 1
            gold_list = set(gold.strip()[:-1].split('(')[1].split(','))
            pred_list = set(pred.strip()[:-1].split('(')[1].split(','))
            if gold_list == pred_list:
                ecount += 1
            else:
                pass
    return count/len(test_data), ecount/len(test_data)
