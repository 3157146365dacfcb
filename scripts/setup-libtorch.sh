#!/usr/bin/env bash
# Installs torch==2.11.0 (the libtorch that tch 0.24 is built against), the matching
# torchvision (used only to generate test fixtures), and onnx + onnxruntime (the checks of
# `lbwnet export --onnx` and scripts/onnx-detect.py) into a cached virtualenv outside the
# checkout. Idempotent: a second run only checks the version and prints the location.
set -euo pipefail

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
ONNX_VERSION=1.23.2
ONNXRUNTIME_VERSION=1.32.0
ENV_DIR="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-$TORCH_VERSION}"
PY="$ENV_DIR/bin/python"
STAMP="$ENV_DIR/.lbwnet-ok"

installed_version() {
  # Read the version from the package metadata: importing torch takes seconds.
  "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as m
print(m.version("torch").split("+")[0], m.version("torchvision").split("+")[0],
      m.version("onnx"), m.version("onnxruntime"))
PY
}

WANTED="$TORCH_VERSION $TORCHVISION_VERSION $ONNX_VERSION $ONNXRUNTIME_VERSION"
if [ -f "$STAMP" ] && [ "$(installed_version)" = "$WANTED" ]; then
  echo "$ENV_DIR"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "setup-libtorch: $PYTHON not found; install Python 3.10+" >&2; exit 1; }
if [ ! -x "$PY" ]; then
  echo "setup-libtorch: creating virtualenv $ENV_DIR" >&2
  mkdir -p "$(dirname "$ENV_DIR")"
  "$PYTHON" -m venv "$ENV_DIR"
fi
echo "setup-libtorch: installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION onnx==$ONNX_VERSION onnxruntime==$ONNXRUNTIME_VERSION (about 4.7 GB)" >&2
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check \
  "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" numpy \
  "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" pillow

got="$(installed_version)"
if [ "$got" != "$WANTED" ]; then
  echo "setup-libtorch: expected torch torchvision onnx onnxruntime $WANTED, found '$got'" >&2
  exit 1
fi
touch "$STAMP"
echo "$ENV_DIR"
