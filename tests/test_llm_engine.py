"""The real llama.cpp engine, as installed, on this host: built portable, and it loads and answers.

The engine runs in a subprocess (`python -m deployments.llm`), so a native crash (SIGSEGV in an
AMX kernel, SIGILL from instructions this CPU lacks) fails this test with the signal's name
instead of killing pytest, and fails CI instead of a user's first start.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

FORBIDDEN = {
    r"%zmm\d": "AVX-512 (512-bit registers)",
    r"%k[0-7]\b": "AVX-512 (mask registers)",
    r"\{1to\d+\}": "AVX-512 (embedded broadcast)",
    r"\bvpternlog[dq]\b": "AVX-512F",
    r"\bvperm[it]2": "AVX-512F",
    r"\bvpdp(bus|ws)ds?\b": "AVX-VNNI / AVX512-VNNI",
    r"\bvdpbf16ps\b": "AVX512-BF16",
    r"\b(tileloadd|tileloaddt1|ldtilecfg|tilezero|tilestored)\b": "AMX",
    r"\btdpb[su][su]d\b": "AMX-INT8",
    r"\btdpbf16ps\b": "AMX-BF16",
}
"""Instructions an AVX2 CPU (Haswell, Zen 1) does not have, with the extension that brings them."""


def _libraries() -> list[Path]:
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    return sorted(p for p in folder.glob("*.so*") if p.is_file() and not p.is_symlink())


@pytest.mark.skipif(not shutil.which("objdump"), reason="objdump (binutils) is not installed")
def test_the_installed_llama_cpp_uses_no_instruction_beyond_avx2() -> None:
    libraries = _libraries()
    assert any("ggml-cpu" in p.name for p in libraries), f"no ggml CPU backend among {libraries}"
    found: dict[str, set[str]] = {}
    for lib in libraries:
        asm = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True, timeout=120
        ).stdout
        hits = {f"{m.group(0)} ({ext})" for pattern, ext in FORBIDDEN.items() if (m := re.search(pattern, asm))}
        if hits:
            found[lib.name] = hits
    assert not found, (
        f"llama.cpp was built for a newer CPU than AVX2 and will crash elsewhere: {found}. "
        "Rebuild it with scripts/build_llama.sh (GGML_NATIVE=OFF)."
    )


def _run_engine(*flags: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployments.llm", *flags], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_real_local_engine_loads_answers_and_exits_in_a_process_of_its_own() -> None:
    done = _run_engine("--question", "What is the capital of France?")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        pytest.fail(f"the local LLM engine crashed with {name} on this CPU; stderr:\n{done.stderr[-3000:]}")
    assert done.returncode == 0, f"exit {done.returncode}; stderr:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"the engine gave no answer; stderr:\n{done.stderr[-3000:]}"


def test_a_missing_model_file_is_one_plain_line_and_a_nonzero_exit(tmp_path) -> None:
    missing = tmp_path / "nowhere.gguf"
    done = _run_engine("--llm-model-path", str(missing), timeout=60)
    assert done.returncode == 1
    assert f"could not load the local model {missing}: no such file" in done.stderr
    assert "Traceback" not in done.stderr
