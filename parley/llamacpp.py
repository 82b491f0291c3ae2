"""llama.cpp (llama-cpp-python) where Parley needs more than its public API: loading safely on any
x86-64 CPU, and reading the logits of the last token evaluated. Shared by the LLM deployment and
the ingress's turn model; written against llama-cpp-python 0.3.36 (pinned in requirements.txt).

Invariant: a model loaded inside `no_amx_repacking` never uses llama.cpp's AMX weight repacking,
which crashes on the first decode when a llama.cpp built with -march=native meets a CPU with AMX.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

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


def last_logits(llama: Any) -> np.ndarray:
    """The logits after the last token `llama.eval` took: float32, one per vocabulary entry.

    llama-cpp-python 0.3 keeps no logits unless the model was made with `logits_all`, which keeps a
    vocabulary-sized row for every token of the context (100 MB for SmolLM2 at 512 tokens); llama.cpp
    itself keeps the last row. The context handle that reaches it is private to llama-cpp-python,
    hence this one place."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),)).copy()
