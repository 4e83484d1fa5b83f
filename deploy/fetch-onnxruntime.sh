#!/usr/bin/env bash
# Installs the ONNX Runtime shared library Lookout loads at run time, from the official PyPI wheel (the
# only place it is published that edge boxes and CI can reach), pinned to the C API level Lookout is built
# against (ort feature api-31).
#   deploy/fetch-onnxruntime.sh [DEST]          DEST defaults to .ort in the repository; the library ends
#                                                up at DEST/lib/libonnxruntime.so (a link to the versioned file)
#   ARCH=aarch64 deploy/fetch-onnxruntime.sh    the ARM build, for another machine
# Safe to re-run: it does nothing when the pinned version is already there.
set -euo pipefail
# ORT_VERSION overrides the pin (the tests use an older runtime to check that it is refused).
VERSION="${ORT_VERSION:-1.31.1}"
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here/.ort}"
arch="${ARCH:-$(uname -m)}"
lib="$dest/lib/libonnxruntime.so.$VERSION"

if [[ -f "$lib" ]]; then
  ln -sfn "libonnxruntime.so.$VERSION" "$dest/lib/libonnxruntime.so"
  exit 0
fi

case "$arch" in
  x86_64 | amd64) platforms=(--platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64) ;;
  aarch64 | arm64) platforms=(--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64) ;;
  *) echo "no ONNX Runtime wheel for architecture $arch" >&2; exit 1 ;;
esac

python="$(command -v python3 || true)"
if [[ -z "$python" ]]; then
  echo "python3 (with pip) is needed to fetch the ONNX Runtime wheel" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: "${platforms[@]}" \
  --python-version 3.11 --dest "$work" "onnxruntime==$VERSION"
wheel="$(ls "$work"/onnxruntime-*.whl)"
"$python" - "$wheel" "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
mkdir -p "$dest/lib"
cp "$work/unpacked/onnxruntime/capi/libonnxruntime.so.$VERSION" "$lib"
ln -sfn "libonnxruntime.so.$VERSION" "$dest/lib/libonnxruntime.so"
echo "ONNX Runtime $VERSION ($arch) installed at $dest/lib/libonnxruntime.so"
