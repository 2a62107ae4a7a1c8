"""A uniform model soup (Wortsman et al. 2022): the mean of the weights of full fine-tunings of one base model
(bench/accuracy.md §10).

    .venv/bin/python bench/model_soup.py OUT MODEL_DIR MODEL_DIR [MODEL_DIR ...]

OUT is a copy of the first MODEL_DIR (card, tokenizer, config; not its TensorBoard events nor its typicality
statistics, which belong to its own weights) with `model.safetensors` replaced by the mean of every MODEL_DIR's.
Score it with `intentlm eval --model OUT --data runs/demo/val.json --report OUT.val` and bench/split_figures.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> None:
    out, *models = (Path(arg) for arg in sys.argv[1:])
    if len(models) < 2:
        sys.exit(__doc__)
    weights = [load_file(model / "model.safetensors") for model in models]
    mean = {name: sum(w[name].float() for w in weights).div(len(weights)).to(tensor.dtype)
            for name, tensor in weights[0].items()}
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(models[0], out, ignore=shutil.ignore_patterns("tensorboard", "typicality.npz"))
    save_file(mean, out / "model.safetensors", metadata={"format": "pt"})
    print(f"{out}: the mean of {len(models)} models' weights")


if __name__ == "__main__":
    main()
