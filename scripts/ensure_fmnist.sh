#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist when its IDX files are missing.
set -euo pipefail
dir=${1:-/usr/share/datasets/fashion-mnist}
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
echo "Fashion-MNIST not found in $dir; installing the Debian package dataset-fashion-mnist..."
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "error: need root to run: apt-get update && apt-get install -y dataset-fashion-mnist" >&2
  echo "       (or train with ARGS='--data-dir DIR' pointing at the four IDX .gz files)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "error: apt-get is not available; get the four Fashion-MNIST IDX .gz files and" >&2
  echo "       train with ARGS='--data-dir DIR'" >&2
  exit 1
fi
$sudo apt-get update -q && $sudo apt-get install -y -q dataset-fashion-mnist
