"""Loading llama.cpp (llama-cpp-python) safely on any x86-64 CPU: shared by the LLM deployment
and the ingress's turn model.

Invariant: a model loaded inside `no_amx_repacking` never uses llama.cpp's AMX weight repacking,
which crashes on the first decode when a llama.cpp built with -march=native meets a CPU with AMX.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("parley.llamacpp")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@contextmanager
def no_amx_repacking(llama_cpp: Any) -> Iterator[None]:
    """Load with `use_extra_bufts = False` when this llama.cpp has AMX kernels and the CPU has AMX.

    A llama.cpp built with -march=native on a CPU with AMX repacks weights for its AMX kernels,
    which crash (SIGSEGV in ggml_backend_amx_mul_mat) on the first decode. scripts/build_llama.sh
    builds without AMX; this protects a llama-cpp-python installed some other way.
    """
    built_with_amx = "AMX" in llama_cpp.llama_print_system_info().decode(errors="replace")
    if not (built_with_amx and "amx_tile" in cpu_flags()):
        yield
        return
    log.warning("this llama.cpp was built with AMX kernels and the CPU has AMX: loading without weight repacking")
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default
