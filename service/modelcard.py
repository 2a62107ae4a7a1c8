"""The model directory contract (DESIGN §4): ``intentlm.json``, atomic directory writes, cache paths.

A model directory is a plain Hugging Face directory (config, safetensors, tokenizer, chat template)
that vLLM and transformers load directly, plus ``intentlm.json``: what the model was trained on and
with which prompt, so the server and the evaluator rebuild the same prompt and intent grammar.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import IntentlmError
from service.prompt import DEFAULT_SYSTEM_PROMPT
from service.scope import OutOfScopeRule

# The model directory's own files (DESIGN §4), named here and nowhere else. Besides them: the Hugging Face
# weights, tokenizer and chat template, which vLLM and transformers read themselves.
CONFIG_FILE = "config.json"  # the Hugging Face config: what makes a directory a model directory
CARD_FILE = "intentlm.json"  # the card (``ModelCard``)
STATS_FILE = "typicality.npz"  # the typicality statistics (service.typicality); not .safetensors: vLLM
# would load every .safetensors file of the directory as weights
ADAPTER_DIR = "adapter"  # a LoRA run's adapter, kept beside the merged weights
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: what makes a directory an adapter directory
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a served model's name: a URL segment, a metric label
TENSORBOARD_DIR = "tensorboard"  # the run's TensorBoard logs, unless the user sent them elsewhere
CARD_FORMAT = 1
BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
DEMO_MODEL_NAME = "smarthome-demo"
# Share of training arguments that must be word spans of their instruction for `args_from_text`:
# a few annotation slips (a normalised date, a typo fixed) must not switch the constraint off.
ARGS_FROM_TEXT_SHARE = 0.95


class DataInfo(BaseModel):
    """Which data a model was trained on, so a result can be traced to its file."""

    file: str
    sha256: str
    records: int


class ModelCard(BaseModel):
    """The contents of ``intentlm.json``. Unknown keys are kept so newer writers lose nothing."""

    model_config = ConfigDict(extra="allow")

    format: int = CARD_FORMAT
    base_model: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    apply_chat_template: bool = True
    intents: list[str] = Field(default_factory=list)
    # True when training found the arguments to be word spans of their instructions (see
    # ARGS_FROM_TEXT_SHARE): decoding then allows only spans of the request's text as arguments.
    args_from_text: bool = False
    # The calibrated out-of-scope threshold on the intent confidence (`intentlm eval --calibrate`);
    # the server's default when INTENTLM_OOS_THRESHOLD is unset. None: not calibrated.
    oos_threshold: float | None = Field(None, ge=0, le=1)
    # The out-of-scope threshold on the hidden-state typicality (service.typicality, whose statistics
    # training writes to typicality.npz): set by training from the training requests' cross-fitted scores,
    # refined by `intentlm eval --calibrate`; the server's default when INTENTLM_TYPICALITY_THRESHOLD is
    # unset. None: off (no statistics, or too few records to bound the in-scope cost).
    typicality_threshold: float | None = Field(None, ge=0, le=1)
    # Temperature of the intent confidence (`intentlm eval --calibrate` fits it on held-out data): the
    # reported confidence is exp(log p / T), so T > 1 lifts an under-confident model.
    confidence_temperature: float = Field(1.0, gt=0)
    train_config: dict[str, Any] = Field(default_factory=dict)
    data: DataInfo | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def oos_rule(
        self, confidence_threshold: float | None = None, typicality_threshold: float | None = None
    ) -> OutOfScopeRule:
        """The out-of-scope rule: each threshold as given (an operator's setting), else the calibrated
        one of this card, else 0 (off)."""
        return OutOfScopeRule(
            confidence_threshold=_first_set(confidence_threshold, self.oos_threshold),
            typicality_threshold=_first_set(typicality_threshold, self.typicality_threshold),
        )


def _first_set(*thresholds: float | None) -> float:
    return next((t for t in thresholds if t is not None), 0.0)


class ModelCardError(IntentlmError, ValueError):
    """``intentlm.json`` exists but cannot be used."""


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model directory that vLLM and transformers can load (it has a config)."""
    return (Path(path) / CONFIG_FILE).is_file()


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an adapter directory: a LoRA adapter (PEFT's files) with its own card and statistics, served
    over the base model its card names instead of a merged copy (the bundled ``training/demo`` is one)."""
    return (Path(path) / ADAPTER_CONFIG).is_file() and not is_model_dir(path)


def adapter_rank(adapter_dir: str | os.PathLike[str]) -> int:
    """An adapter directory's LoRA rank (PEFT's ``r``): what vLLM's ``max_lora_rank`` must reach to load it."""
    import json

    return int(json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())["r"])


def weights_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The directory whose weights vLLM loads for ``model_dir``: itself, or an adapter's base model.

    An adapter names its base as PEFT does (``base_model_name_or_path`` in ``adapter_config.json``), or its card does
    (``base_model``): a path, or the name of a model prepared under ``$INTENTLM_HOME/models`` (``intentlm model
    prepare`` puts the default base there)."""
    model_dir = Path(model_dir)
    if not is_adapter_dir(model_dir):
        return model_dir
    import json

    card = read_card(model_dir)
    names = [
        json.loads((model_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path"),
        card and card.base_model,
    ]
    for name in filter(None, names):
        for candidate in (Path(name).expanduser(), intentlm_home() / "models" / name):
            if is_model_dir(candidate):
                return candidate
    raise ModelCardError(
        f"{model_dir}: its base model ({' or '.join(map(repr, filter(None, names))) or 'unnamed'}) is neither a "
        f"model directory nor prepared under {intentlm_home() / 'models'} (run `intentlm model prepare`, or write "
        f"its path into base_model_name_or_path of {ADAPTER_CONFIG})"
    )


def read_card(model_dir: str | os.PathLike[str]) -> ModelCard | None:
    """The card of a model directory; None when it has none (any HF model directory still loads)."""
    path = Path(model_dir) / CARD_FILE
    if not path.exists():
        return None
    try:
        card = ModelCard.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ModelCardError(f"{path}: {exc.errors()[0]['msg']} (field {_loc(exc)})") from exc
    if card.format > CARD_FORMAT:
        raise ModelCardError(f"{path}: format {card.format} is newer than this intentlm ({CARD_FORMAT})")
    return card


def write_card(model_dir: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``intentlm.json`` atomically (temporary file + rename)."""
    path = Path(model_dir) / CARD_FILE
    atomic_write_bytes(path, card.model_dump_json(indent=2).encode() + b"\n")
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place only when the block succeeds.

    A crash, Ctrl-C or SIGKILL inside the block leaves ``target`` as it was (the temporary sibling,
    named ``.NAME.tmp-*``, is removed on exceptions and is harmless when a kill leaves it behind).
    Replacing an existing directory takes two renames; between them the old one is kept as
    ``.NAME.old-*`` and ``recover_directory`` puts it back if the process died there.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_directory(target: str | os.PathLike[str]) -> None:
    """Undo a replacement that died between its two renames: restore ``.NAME.old-*`` if NAME is gone."""
    target = Path(target)
    if target.exists() or not target.parent.exists():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], target)


def intentlm_home() -> Path:
    """The cache for prepared models (``$INTENTLM_HOME``, default ``~/.cache/intentlm``)."""
    return Path(os.environ.get("INTENTLM_HOME") or Path.home() / ".cache" / "intentlm").expanduser()


def base_model_dir() -> Path:
    """Where ``intentlm model prepare`` puts the converted default base model."""
    return intentlm_home() / "models" / BASE_MODEL_NAME


def demo_model_dir() -> Path:
    """Where ``intentlm model prepare`` puts the bundled smart-home demo model (base + demo adapter)."""
    return intentlm_home() / "models" / DEMO_MODEL_NAME


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _loc(exc: ValidationError) -> str:
    return ".".join(str(part) for part in exc.errors()[0]["loc"]) or "(root)"
