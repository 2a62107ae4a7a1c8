"""Server settings: one pydantic-settings model, read from ``INTENTLM_*`` variables, overridden by CLI flags.

Every knob an operator may turn lives here once, with its default and the reason for it; the CLI
only maps flags onto these fields, and the server prints the result at start-up (secrets masked)
so a log always says what a process was running with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import IntentlmError
from service.hardware import Dtype, choose_dtype
from service.modelcard import (
    ADAPTER_CONFIG,
    MODEL_NAME,
    adapter_rank,
    base_model_dir,
    demo_model_dir,
    is_adapter_dir,
    is_model_dir,
    weights_dir,
)
from service.scope import DEFAULT_OOS_LABEL


class ModelNotFoundError(IntentlmError, RuntimeError):
    """No model directory was given and no prepared one exists."""


MAX_MODELS = 32  # models one server holds at most: the bound of the ``model`` label of the metrics
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
CPU_BLOCK_SIZE = 32  # tokens per KV block on the CPU: the smallest multiple of 32 its attention kernel takes
EAGER = (
    "Run the model as written: no torch.compile, no graph capture. Starts ~10 s faster (~60 s the first time on a "
    "machine, before the compile cache is filled), but a request takes ~1.4x as long on the 2-core CPU. Default: "
    "on for offline runs (eval, pre-labelling, training's scoring), off for the server."
)
MAX_IN_FLIGHT = (
    "Requests generating at once: vLLM's max_num_seqs. Default: 64 for the server (with max_queued, its admission "
    "bound), 512 for offline runs, whose batch is bound by computation: the more requests share a step, the fewer "
    "steps."
)
JUMP_FORWARD = (
    "Propose answer drafts to vLLM as speculative tokens: what the intent grammar forces and the likely rest of the "
    "answer, so that an answer takes ~3.6 decode steps instead of ~10 (service/vllm_drafts.py); answers stay what "
    "decoding without them gives. auto: on, except for adapter directories (the proposer reads a merged model's "
    "card), which on refuses. Default: auto for the server, off for offline runs (a batch of hundreds is bound by "
    "computation, where verifying drafts costs more than the steps it saves)."
)


class EngineSettings(BaseSettings):
    """The vLLM engine's arguments, read by the online engine (``intentlm serve``) and the offline one (``intentlm
    eval --model``, pre-labelling, training's end-of-run scoring) alike, so both decode the same way."""

    model_config = SettingsConfigDict(env_prefix="INTENTLM_", extra="ignore")

    # A short context keeps the KV cache small; intent prompts are a few dozen tokens.
    max_model_len: int = Field(2048, ge=64, description="Context length (prompt + answer) in tokens.")
    dtype: Dtype = Field(
        "auto",
        description="Compute dtype of vLLM and the typicality pass; auto: bfloat16 where "
        "the hardware computes it natively (CUDA, AVX512-BF16/AMX CPUs), else float32.",
    )
    # Offline runs are one batch, over in a minute: compiling costs more than it saves there, while a server compiles
    # once for hours of requests (``Settings``). In float32 both give the same answers; in bf16 a near-tied argument
    # can differ (8 of the 480 test answers), as it does between batches of different sizes.
    enforce_eager: bool = Field(True, description=EAGER)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU only: share of memory vLLM may take.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPU only: shard the model over this many GPUs (vLLM).")
    max_in_flight: int = Field(512, ge=1, description=MAX_IN_FLIGHT)
    typicality: bool = Field(
        True,
        description="Score typicality when the model directory has typicality.npz. vLLM scores it in its own "
        "forward pass (service/vllm_states.py) on one worker without CUDA graphs (the CPU, or an eager GPU engine); "
        "elsewhere a second copy of the model (transformers) runs a second forward pass of each prompt.",
    )
    # Offline runs are one large batch: drafts save steps at low concurrency, where a step costs the same whatever it
    # verifies, but in a batch of 512 every drafted token is computed, and vLLM's rejection sampler takes the
    # log-probabilities of k+1 positions of every request at each step (eval of the test file: 14.5 -> 8.6 s of
    # generation with drafts off and 512 requests at once, against on and 64; docs/decisions.md).
    jump_forward: Literal["auto", "on", "off"] = Field("off", description=JUMP_FORWARD)
    max_adapters: int = Field(
        4,
        ge=1,
        description="With adapter directories: how many adapters one batch can mix (vLLM's max_loras); requests "
        "for more wait for a slot.",
    )
    cpu_kvcache_gib: int = Field(
        1, ge=1, description="CPU only: the KV cache vLLM reserves, in GiB (VLLM_CPU_KVCACHE_SPACE, when unset)."
    )
    # vLLM's own default reserves one core, which on a 2-core machine halves the engine's compute while the
    # API process needs little: 0 measured 1.5x the throughput at concurrency 32 there (BENCHMARKS.md, Serving).
    cpu_reserved_cores: int = Field(
        0,
        ge=0,
        description="CPU only: cores vLLM keeps away from its engine for the API process "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU, when unset).",
    )

    def lora_engine_args(self, adapters: Sequence[Path]) -> dict[str, Any]:
        """vLLM's LoRA arguments for serving ``adapters`` over their base: up to ``max_adapters`` of them in one batch,
        the largest rank among them rounded up to one vLLM supports (an adapter added later may not pass it)."""
        rank = max(map(adapter_rank, adapters))
        return {
            "enable_lora": True,
            "max_loras": max(self.max_adapters, len(adapters)),
            "max_lora_rank": next(r for r in LORA_RANKS if r >= rank),
        }

    def single_pass_typicality(self, *model_dirs: Path) -> dict[str, Any]:
        """The engine arguments with which vLLM scores typicality in its own forward pass (service.vllm_states), or
        {} where it does not (typicality off, no statistics, graph capture, several workers, another architecture)."""
        if not self.typicality:
            return {}
        from vllm.platforms import current_platform

        from service.vllm_states import single_pass_overrides

        # vLLM's CPU backend compiles the model but captures no graphs: the model's Python forward runs at every step
        python_forward = self.enforce_eager or current_platform.is_cpu()
        return single_pass_overrides(
            model_dirs, python_forward=python_forward, tensor_parallel_size=self.tensor_parallel_size
        )

    def jump_forward_on(self, *model_dirs: Path) -> bool:
        """``jump_forward`` resolved for the models of one engine: auto is on unless adapters are served."""
        return self.jump_forward == "on" or (self.jump_forward == "auto" and not any(map(is_adapter_dir, model_dirs)))

    def engine_args(self, *model_dirs: Path) -> dict[str, Any]:
        """The keyword arguments of vLLM's ``EngineArgs`` (and so of ``AsyncEngineArgs`` and ``LLM``) for one model
        directory, or for several that share one base (adapter directories, and at most the base itself): vLLM's LoRA
        serves the adapters over it in one engine.

        Sets vLLM's CPU variables from these settings first (where the environment has not), since vLLM
        reads them from the environment when the engine starts."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kvcache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(self.cpu_reserved_cores))
        # One process fewer: the offline engine runs in this process, and the server's engine-core process runs the
        # model itself (on vLLM's CPU platform this variable also decides that), instead of handing each step to a
        # worker process over shared memory while it spins for the reply on the same two cores: at concurrency 1
        # on the 2-core CPU 10 % less latency, at 32 the same throughput (docs/decisions.md, "Inference speed").
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM 0.32's AOT-compiled artefacts fail to load on the CPU backend ("'function' object has no attribute
        # 'finalize_loading'") and every start compiled from scratch (50 s); torch's own caches load (8 s)
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        from vllm.platforms import current_platform

        from service.vllm_drafts import speculative_config

        weights = {weights_dir(d).resolve() for d in model_dirs}
        if len(weights) != 1:
            raise ValueError(
                "one engine serves one base model: "
                + ", ".join(f"{d} is {weights_dir(d)}" for d in model_dirs)
                + " (serve adapter directories of one base together, each other model on its own server)"
            )
        (weights_of,) = weights
        adapters = [d for d in model_dirs if is_adapter_dir(d)]
        if adapters and self.jump_forward == "on":
            raise ValueError(
                f"{adapters[0]} is an adapter directory: jump-forward decoding needs a merged model directory "
                "(its proposer reads the card where vLLM loads the weights); turn it off with --jump-forward off"
            )
        jump_forward = speculative_config(weights_of) if self.jump_forward_on(*model_dirs) else None
        # Prefix caching reuses whole KV blocks: vLLM's CPU default of 128 tokens caches nothing of a system turn
        # shorter than that, so the CPU gets its kernel's smallest block (GPUs keep their default of 16).
        blocks = {"block_size": CPU_BLOCK_SIZE} if current_platform.is_cpu() else {}
        return {
            **blocks,
            **self.single_pass_typicality(*model_dirs),
            **({"speculative_config": jump_forward} if jump_forward else {}),
            **(self.lora_engine_args(adapters) if adapters else {}),
            "model": str(weights_of),
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_in_flight,
            "dtype": choose_dtype(self.dtype).dtype,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": True,  # every request shares the system prompt's prefix
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "generation_config": "vllm",  # sampling comes from the request, not generation_config.json
            "seed": 0,
        }


def lora_request(model_dir: Path) -> Any:
    """The ``LoRARequest`` every generation of ``model_dir`` carries when it is an adapter directory, else None."""
    if not is_adapter_dir(model_dir):
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(model_dir.name, 1, str(model_dir.absolute()))


def _model_dirs(path: Path, name: str | None) -> list[tuple[str, Path]]:
    """``path`` as served models: itself (a model or adapter directory), or the model directories in it."""
    if is_model_dir(path) or is_adapter_dir(path):
        return [(name or path.name, path)]
    inside = sorted(d for d in path.iterdir() if is_model_dir(d) or is_adapter_dir(d)) if path.is_dir() else []
    if not inside or name is not None:
        raise ModelNotFoundError(
            f"{path} is not a model directory (no config.json), nor an adapter directory (no {ADAPTER_CONFIG})"
            + (", nor a folder of them" if name is None else "")
        )
    return [(d.name, d) for d in inside]


class Settings(EngineSettings):
    """The server's settings: the engine's, and what the HTTP side adds."""

    # compiled, drafted, 64 at once: see EngineSettings
    enforce_eager: bool = Field(False, description=EAGER)
    jump_forward: Literal["auto", "on", "off"] = Field("auto", description=JUMP_FORWARD)
    max_in_flight: int = Field(64, ge=1, description=MAX_IN_FLIGHT)

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model to serve: a model or adapter directory, NAME=DIR to name it (default: the directory's "
        "name), or a folder of such directories; repeat (or separate with commas) for several adapters of one base, "
        "served by one engine. The first is the default of requests that name none. Default: the demo model, else "
        "the base model.",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_token: SecretStr | None = Field(None, description="When set, every route but health and metrics needs it.")

    # Admission control: past max_in_flight + max_queued admitted requests, or past the deadline, answer 503 at once.
    max_queued: int = Field(192, ge=0, description="Requests waiting for a batch slot before 503.")
    admission_deadline: float = Field(
        2.0,
        ge=0,
        description="Refuse at once (503, Retry-After) a request whose expected time to its answer, from the "
        "measured service rate, passes this many seconds: a voice assistant that waits longer has lost its "
        "user. 0: off (only the count bound applies).",
    )
    request_timeout: float = Field(30.0, gt=0, description="Seconds after which a request is aborted with 504.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")

    # Generation.
    max_new_tokens_cap: int = Field(
        256, ge=1, description="Upper bound on any request's max_new_tokens (intent answers are short)."
    )
    intent_max_tokens: int = Field(64, ge=1, description="Answer budget of /v1/intents.")
    oos_label: str = Field(
        DEFAULT_OOS_LABEL, description="Intent returned when confidence or typicality is below its threshold."
    )
    oos_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Below this confidence the answer is out-of-scope; unset: the model card's calibrated "
        "threshold (`intentlm eval --calibrate`), else 0 = off.",
    )
    typicality_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Below this typicality (how close the prompt's hidden state is to the training requests of "
        "its nearest intent) the answer is out-of-scope; unset: the model card's (set by training, refined by "
        "`intentlm eval --calibrate`), else 0 = off.",
    )

    # Traffic back to labels (service/uncertain.py). Off by default: the utterances are the users' words and can be
    # personal data, so only an operator who decided to keep them turns it on.
    record_uncertain: Path | None = Field(
        None,
        description="Opt-in (the file holds users' utterances, which can be personal data): append each "
        "/v1/intents answer rejected as out-of-scope or below --record-uncertain-confidence to this JSON Lines "
        "file, with its scores, for `intentlm data to-itag --from-log`.",
    )
    record_uncertain_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="With --record-uncertain: an in-scope answer whose confidence is below this is recorded "
        "(out-of-scope ones always are); 0: only the out-of-scope ones.",
    )
    record_uncertain_max_bytes: int = Field(
        64 << 20,
        ge=1,
        description="With --record-uncertain: stop appending (one warning) once the file would pass this size; "
        "existing lines are never rotated away or truncated.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as one JSON object a line (time, level, logger, message, request_id, "
        "exc_info) for log collectors, vLLM's lines included.",
    )

    @property
    def max_admitted(self) -> int:
        return self.max_in_flight + self.max_queued

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """INTENTLM_MODEL=a,b and a single path, besides a list (the repeated flag)."""
        if isinstance(value, (str, Path)):
            return [part for part in str(value).split(",") if part]
        return value

    def resolve_models(self) -> dict[str, Path]:
        """The models to serve, by name, the default first: those given, else the demo model, else the base model."""
        if not self.model:
            for candidate in (demo_model_dir(), base_model_dir()):
                if is_model_dir(candidate):
                    return {candidate.name: candidate}
            raise ModelNotFoundError(
                f"no model to serve: pass --model DIR, or run `intentlm model prepare` to create "
                f"{demo_model_dir()} (or at least {base_model_dir()})"
            )
        models: dict[str, Path] = {}
        for given in self.model:
            name, _, where = given.rpartition("=")
            for found_name, path in _model_dirs(Path(where).expanduser(), name or None):
                if not MODEL_NAME.fullmatch(found_name):
                    raise ModelNotFoundError(
                        f"{given}: a model's name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                        f"digit (name it with NAME=DIR); got {found_name!r}"
                    )
                if found_name in models:
                    raise ModelNotFoundError(
                        f"two models named {found_name!r} ({models[found_name]}, {path}): name one with NAME=DIR"
                    )
                models[found_name] = path
        if len(models) > MAX_MODELS:
            raise ModelNotFoundError(f"{len(models)} models given: one server serves {MAX_MODELS} at most")
        return models

    def summary(self) -> dict[str, object]:
        """The settings as printed at start-up; the token is masked."""
        values = self.model_dump()
        values["api_token"] = "***" if self.api_token else None
        return values
