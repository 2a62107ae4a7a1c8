"""Run a process on an AVX512/AMX machine as if its CPU had AVX2 only, for a benchmark of the AVX2 code paths.

Python imports this module at start when its folder is on ``PYTHONPATH``, and the variable ``EMULATE_AVX2=1`` turns
it on: torch and vLLM then see no avx512/amx capability (vLLM loads its AVX2 kernels, none of its AMX paths), ATen
dispatches its AVX2 kernels and oneDNN stops at AVX2. Memory bandwidth, caches and clock stay this machine's, so the
figures show the instruction set's share, not another CPU's speed. Use a compile cache of its own
(``TORCHINDUCTOR_CACHE_DIR``, ``VLLM_CACHE_ROOT``): one filled on the real instruction set gave wrong answers here.
intentlm's dtype rule reads the CPU flags from /proc/cpuinfo, so pass ``INTENTLM_DTYPE=float32``, what the rule picks
on such a CPU. BENCHMARKS.md ("Answer drafts") has the command.
"""

import os

if os.environ.get("EMULATE_AVX2") == "1":
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import torch.cpu

    _capabilities = torch.cpu.get_capabilities

    def _avx2_capabilities() -> dict:
        return {k: v and not k.startswith(("avx512", "amx")) for k, v in _capabilities().items()}

    torch.cpu.get_capabilities = _avx2_capabilities
