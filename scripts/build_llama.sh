#!/usr/bin/env bash
# Builds llama-cpp-python once as a portable wheel and installs it into the active venv.
#
# Why: `pip install llama-cpp-python` compiles llama.cpp with -march=native. Such a build uses
# every instruction the *builder's* CPU has: on a Xeon with AMX it takes llama.cpp's AMX path,
# which segfaults in ggml_backend_amx_mul_mat() on the first decode; a build made on an AVX-512
# machine dies with SIGILL on an AVX2-only one. GGML_NATIVE=OFF compiles for x86-64 with AVX,
# AVX2, FMA, F16C and BMI2 (llama.cpp's defaults when not native) and no AVX-512 and no AMX, so
# the same wheel runs on every x86-64 CPU with AVX2 (Intel Haswell / AMD Zen and newer). On
# aarch64 it is the generic armv8 build. The cost on this 2-core AVX-512 machine is in docs/models.md.
#
# The wheel is kept in ~/.cache/parley/wheels (PARLEY_WHEELHOUSE), in a folder named after the
# version and these flags, so a new venv installs it in seconds and a flag change rebuilds. pip's
# own wheel cache is bypassed on purpose: it is keyed by the sdist, not by CMAKE_ARGS, and would
# hand back a -march=native wheel built earlier.
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' requirements.txt)"
flags="-DGGML_NATIVE=OFF"
tag="$(printf '%s' "$version $flags" | sha256sum | cut -c1-12)"
house="${PARLEY_WHEELHOUSE:-$HOME/.cache/parley/wheels}/llama-cpp-python-$version-portable-$tag"

if ! compgen -G "$house/llama_cpp_python-*.whl" >/dev/null; then
  if ! command -v c++ >/dev/null || ! command -v make >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "parley: installing a C++ compiler to build llama.cpp (Debian build-essential)..."
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential >/dev/null
    else
      echo "parley: building llama.cpp needs a C++ compiler and make: install build-essential (or gcc-c++ and make)" >&2
      exit 1
    fi
  fi
  echo "parley: building llama-cpp-python $version for any x86-64 CPU with AVX2 (once, ~6 min)..."
  rm -rf "$house.tmp" && mkdir -p "$house.tmp"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -w "$house.tmp"
  rm -rf "$house" && mv "$house.tmp" "$house"
fi
# --force-reinstall: replace a -march=native build an older install put in this venv.
python -m pip install -q --force-reinstall --no-deps "$house"/llama_cpp_python-*.whl
