"""The compute dtype by hardware: one rule for vLLM (server and eval) and every torch copy of a model.

vLLM's CPU backend picks bfloat16 on every x86 CPU, and torch emulates bfloat16 matrix products where the CPU
lacks AVX512-BF16 or AMX: there a bf16 model answers about 1.25x slower than in float32 (issue "One inference
path", measured on an AVX2-only 2-core CPU: 1210 ms against 968 ms p50). So ``auto`` means bfloat16 where the
hardware computes it natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX), else float32. The
typicality statistics and the threshold are fitted on states computed under this rule, so the server, the
evaluator and training must all follow it on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype to compute in and why (printed at the start of serve, eval and train)."""

    dtype: Literal["bfloat16", "float16", "float32"]
    reason: str

    def __str__(self) -> str:
        return f"dtype {self.dtype} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: such a CPU gets float32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def choose_dtype(requested: Dtype = "auto", *, cuda: bool | None = None) -> DtypeChoice:
    """``requested`` as given, or for ``auto`` the hardware's rule (module docstring). ``cuda`` None: ask torch."""
    if requested != "auto":
        return DtypeChoice(requested, "as requested")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            supported = torch.cuda.is_bf16_supported()
            return DtypeChoice(
                "bfloat16" if supported else "float32", "CUDA GPU with bf16" if supported else "CUDA GPU without bf16"
            )
    if cuda:
        return DtypeChoice("bfloat16", "CUDA GPU")
    native = sorted(set(_NATIVE_BF16_FLAGS) & cpu_flags())
    if native:
        return DtypeChoice("bfloat16", f"CPU computes bf16 natively: {', '.join(native)}")
    return DtypeChoice("float32", "CPU has no AVX512-BF16 or AMX: torch would emulate bf16, slower than float32")
