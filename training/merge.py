"""LoRA adapter + base model -> one plain model directory that vLLM and transformers load directly.

The adapter is always merged into a freshly loaded, unquantized copy of the base (also after QLoRA,
whose base was 4/8-bit during training): the served model is the base's own precision plus the
learned update, with no quantization config and no PEFT dependency at serving time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def base_dtype(base_model: Path) -> Any:
    """The dtype the base model is stored in (bf16 for the prepared SmolLM2): the merged model keeps it."""
    import json

    import torch

    config = json.loads((base_model / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""))


def merge_adapter(base_model: Path, adapter_dir: Path) -> Any:
    """Load the base in float32, apply the adapter, fold it into the weights (merging in fp32 avoids
    rounding the update twice); ``save_model_dir`` then stores it in the base's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def save_model_dir(model: Any, base_model: Path, target: Path) -> None:
    """Save weights (in the base's dtype), config, generation config and the base's tokenizer + chat template."""
    from transformers import AutoTokenizer

    model = model.to(base_dtype(base_model))
    model.config.use_cache = True
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(target)


def merge_adapter_dir(adapter: Path, target: Path, base: Path, **card_extra: Any) -> Path:
    """An adapter directory (service.modelcard.is_adapter_dir) merged into ``base`` as a model directory at
    ``target``, written atomically, with the adapter's card (plus ``card_extra``) and typicality statistics: what
    serves one model fastest (vLLM's LoRA costs the merged weights' extra products at every step)."""
    import shutil

    from service.modelcard import STATS_FILE, ModelCard, atomic_directory, read_card, write_card

    card = read_card(adapter) or ModelCard()
    merged = merge_adapter(base, adapter)
    with atomic_directory(target) as tmp:
        save_model_dir(merged, base, tmp)
        write_card(tmp, ModelCard(**{**card.model_dump(), **card_extra}))
        if (adapter / STATS_FILE).is_file():
            shutil.copyfile(adapter / STATS_FILE, tmp / STATS_FILE)
    return target
