#!/usr/bin/env bash
# Installs the ONNX Runtime shared library Lookout loads at run time, from the official PyPI wheel (the
# only place it is published that edge boxes and CI can reach), pinned to the C API level Lookout is built
# against (ort feature api-31), and on request the accelerators that go with it, from their PyPI wheels too.
#   deploy/fetch-onnxruntime.sh [DEST]          DEST defaults to .ort in the repository; the library ends
#                                                up at DEST/lib/libonnxruntime.so (a link to the versioned file)
#   deploy/fetch-onnxruntime.sh --gpu [DEST]    also the CUDA build of the same version, at
#                                                DEST/gpu/lib/libonnxruntime.so with its providers
#                                                (libonnxruntime_providers_cuda.so...), and NVIDIA's CUDA 13 and
#                                                cuDNN 9 libraries flattened into DEST/gpu/lib/cuda
#                                                (which Lookout preloads); a box then needs only
#                                                NVIDIA's driver (libcuda.so.1, r580 or newer), never shipped
#   deploy/fetch-onnxruntime.sh --openvino [DEST]
#                                                also the OpenVINO plugin provider for the CPU build, at
#                                                DEST/lib/openvino/libonnxruntime_providers_openvino_plugin.so,
#                                                with the OpenVINO and TBB libraries it finds beside it
#                                                ($ORIGIN); Lookout registers the plugins in the folders
#                                                beside the library it loads
#   ARCH=aarch64 deploy/fetch-onnxruntime.sh    the ARM build, for another machine (no --openvino there)
# Options combine (--gpu --openvino /opt/x). The CPU library is always installed.
# Safe to re-run: each part does nothing when its pinned versions are already there.
set -euo pipefail
# ORT_VERSION overrides the pin (the tests use an older runtime to check that it is refused).
VERSION="${ORT_VERSION:-1.31.1}"
# The CUDA build of ONNX Runtime 1.31 is built with CUDA 13.0 and cuDNN 9: NVIDIA's wheels of CUDA 13.0
# update 2 (the oldest driver that runs them is the one CUDA 13.0 needs), and the newest cuDNN 9 for CUDA
# 13. libnvJitLink (loaded by cuFFT and cuDNN) and libnvrtc-builtins (by NVRTC, by its bare name: Lookout
# preloads it) are loaded at run time.
CUDA_WHEELS=(
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.1.0.3
  nvidia-cuda-nvrtc==13.0.88
  nvidia-nvjitlink==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cufft==12.0.0.61
  nvidia-cudnn-cu13==9.28.1.4
)
# The libraries ort's preload_dylibs loads by these names, and those they load in turn.
CUDA_LIBRARIES=(
  libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libnvrtc.so.13 libcurand.so.10 libcufft.so.12
  libcudnn.so.9 libcudnn_graph.so.9 libcudnn_ops.so.9 libcudnn_heuristic.so.9 libcudnn_adv.so.9
  libcudnn_cnn.so.9 libcudnn_engines_precompiled.so.9 libcudnn_engines_runtime_compiled.so.9
  libcudnn_engines_tensor_ir.so.9 libcudnn_ext.so.9 libnvrtc-builtins.so.13.0 libnvJitLink.so.13
)
# The OpenVINO plugin wheel carries its own OpenVINO runtime and TBB (it needs no openvino wheel).
OPENVINO_WHEEL=onnxruntime-ep-openvino==1.8.1
# Sonames every Linux box has: glibc, the C++ runtime, zlib (cuDNN), and the NVIDIA driver's libcuda.so.1.
SYSTEM_SONAMES=(
  libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 ld-linux-x86-64.so.2 ld-linux-aarch64.so.1
  libgcc_s.so.1 libstdc++.so.6 libz.so.1 libcuda.so.1
)

usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit "${1:-2}"; }
gpu=false
openvino=false
dest=""
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=true ;;
    --openvino) openvino=true ;;
    -h | --help) usage 0 ;;
    -*) echo "unknown option $arg" >&2; usage ;;
    *) [[ -z "$dest" ]] || { echo "only one DEST, got $dest and $arg" >&2; usage; }; dest="$arg" ;;
  esac
done
arch="${ARCH:-$(uname -m)}"
case "$arch" in
  x86_64 | amd64) m=x86_64 ;;
  aarch64 | arm64) m=aarch64 ;;
  *) echo "no ONNX Runtime wheel for architecture $arch" >&2; exit 1 ;;
esac
platforms=(--platform "manylinux_2_27_$m" --platform "manylinux_2_28_$m")
# NVIDIA's wheels are tagged for older glibc levels too (pip does not count those as compatible by itself).
nvidia_platforms=("${platforms[@]}" --platform "manylinux_2_17_$m" --platform "manylinux2014_$m")
if $openvino && [[ "$m" != x86_64 ]]; then
  echo "the OpenVINO plugin is only published for x86_64, not $arch" >&2
  exit 1
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${dest:-$here/.ort}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
lib="$dest/lib/libonnxruntime.so.$VERSION"

python="$(command -v python3 || true)"
need_python() {
  if [[ -z "$python" ]]; then
    echo "python3 (with pip) is needed to fetch the ONNX Runtime wheels" >&2
    exit 1
  fi
}
work=""
trap '[[ -z "$work" ]] || rm -rf "$work"' EXIT
workdir() { [[ -n "$work" ]] || work="$(mktemp -d)"; }

# download DIR PLATFORM-FLAGS... -- REQUIREMENT...: the wheels, without their Python dependencies.
download() {
  local into="$1"; shift
  local flags=()
  while [[ "$1" != -- ]]; do flags+=("$1"); shift; done
  shift
  mkdir -p "$into"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: "${flags[@]}" \
    --python-version 3.11 --dest "$into" "$@"
}

# extract WHEEL... -- INTO PATTERN...: the files of the wheels whose base names match one of the (Python)
# regular expressions, flattened into INTO. Each is written beside its final name and renamed over it, so
# a process that has the old file loaded keeps it intact. Prints the names written.
extract() {
  "$python" - "$@" <<'PY'
import os, re, sys, zipfile
args = sys.argv[1:]
cut = args.index("--")
wheels, into, patterns = args[:cut], args[cut + 1], [re.compile(p) for p in args[cut + 2:]]
for wheel in wheels:
    archive = zipfile.ZipFile(wheel)
    for member in archive.infolist():
        name = os.path.basename(member.filename)
        if member.is_dir() or not any(p.fullmatch(name) for p in patterns):
            continue
        target = os.path.join(into, name)
        partial = os.path.join(into, "." + name + ".partial")
        with archive.open(member) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        os.chmod(partial, (member.external_attr >> 16) & 0o755 or 0o644)
        os.replace(partial, target)
        print(name)
PY
}

# needed FILE...: the NEEDED sonames of the shared libraries, one a line.
needed() {
  readelf -d "$@" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u
}

# unresolved FOLDER...: NEEDED sonames of the libraries in the folders that are neither in one of them
# nor a system library. Needs readelf (binutils); without it prints nothing.
unresolved() {
  command -v readelf >/dev/null || { echo "readelf (binutils) is missing: dependencies not checked" >&2; return 0; }
  local soname folder files=()
  for folder in "$@"; do files+=("$folder"/*.so*); done
  for soname in $(needed "${files[@]}"); do
    [[ " ${SYSTEM_SONAMES[*]} " == *" $soname "* ]] && continue
    for folder in "$@"; do [[ -e "$folder/$soname" ]] && continue 2; done
    echo "$soname"
  done
}

install_cpu() {
  if [[ -f "$lib" ]]; then
    ln -sfn "libonnxruntime.so.$VERSION" "$dest/lib/libonnxruntime.so"
    return 0
  fi
  need_python
  workdir
  download "$work/cpu" "${platforms[@]}" -- "onnxruntime==$VERSION"
  mkdir -p "$dest/lib"
  extract "$work"/cpu/onnxruntime-*.whl -- "$dest/lib" "libonnxruntime\.so\.$VERSION" >/dev/null
  [[ -f "$lib" ]] || { echo "the onnxruntime $VERSION wheel holds no libonnxruntime.so.$VERSION" >&2; exit 1; }
  ln -sfn "libonnxruntime.so.$VERSION" "$dest/lib/libonnxruntime.so"
}

install_gpu() {
  local gpu_lib="$dest/gpu/lib" cuda="$dest/gpu/lib/cuda" stamp="$dest/gpu/.installed"
  local pins="onnxruntime-gpu==$VERSION ${CUDA_WHEELS[*]} ($arch)"
  local name missing=()
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" && -f "$gpu_lib/libonnxruntime.so.$VERSION" ]] &&
    (cd "$cuda" && ls "${CUDA_LIBRARIES[@]}" >/dev/null 2>&1); then
    ln -sfn "libonnxruntime.so.$VERSION" "$gpu_lib/libonnxruntime.so"
    return 0
  fi
  need_python
  workdir
  download "$work/gpu" "${platforms[@]}" -- "onnxruntime-gpu==$VERSION"
  download "$work/cuda" "${nvidia_platforms[@]}" -- "${CUDA_WHEELS[@]}"
  rm -f "$stamp"
  mkdir -p "$gpu_lib" "$cuda"
  # The TensorRT provider comes along when the wheel has it; it also needs TensorRT, not installed here.
  extract "$work"/gpu/onnxruntime_gpu-*.whl -- "$gpu_lib" "libonnxruntime\.so\.$VERSION" \
    'libonnxruntime_providers_(shared|cuda|tensorrt)\.so' >/dev/null
  ln -sfn "libonnxruntime.so.$VERSION" "$gpu_lib/libonnxruntime.so"
  for name in libonnxruntime.so."$VERSION" libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    [[ -f "$gpu_lib/$name" ]] || missing+=("$name")
  done
  # All the runtime libraries, but not the .alt builds of NVRTC, nor cuFFTW and NVBLAS, which nothing loads.
  extract "$work"/cuda/*.whl -- "$cuda" 'lib(?!nvblas|cufftw)[A-Za-z_-]+\.so\.[0-9.]+' >/dev/null
  for name in "${CUDA_LIBRARIES[@]}"; do
    [[ -f "$cuda/$name" ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    echo "the CUDA build is incomplete, missing from $gpu_lib or $cuda: ${missing[*]}" >&2
    exit 1
  fi
  missing=($(unresolved "$cuda" "$gpu_lib" | grep -v -e '^libnvinfer' -e '^libnvonnxparser' || true))
  if ((${#missing[@]})); then
    echo "the CUDA libraries in $cuda need libraries that are not there: ${missing[*]}" >&2
    exit 1
  fi
  echo "$pins" >"$stamp"
}

install_openvino() {
  local folder="$dest/lib/openvino" stamp="$dest/lib/openvino/.installed" plugin link name
  local pins="$OPENVINO_WHEEL ($arch)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    return 0
  fi
  need_python
  workdir
  download "$work/openvino" "${platforms[@]}" -- "$OPENVINO_WHEEL"
  rm -f "$stamp"
  mkdir -p "$folder"
  # The wheel holds the plugin three times over (zip has no links): keep the versioned file, link the rest.
  extract "$work"/openvino/onnxruntime_ep_openvino-*.whl -- "$folder" \
    'libonnxruntime_providers_openvino_plugin\.so\.[0-9]+\.[0-9]+\.[0-9]+' \
    'lib(?!onnxruntime_providers_openvino_plugin).*\.so(\.[0-9]+)*' 'cache\.json' 'third-party-programs\.txt' \
    >/dev/null
  plugin="$(cd "$folder" && ls libonnxruntime_providers_openvino_plugin.so.*.*.* | sort -V | tail -n 1)"
  # Its soname (libonnxruntime_providers_openvino_plugin.so.1) and the name to register.
  link="${plugin%%.so.*}.so"
  ln -sfn "$plugin" "$folder/$link.$(cut -d. -f1 <<<"${plugin#"$link".}")"
  ln -sfn "$plugin" "$folder/$link"
  # The plugin finds libopenvino beside it through its RUNPATH $ORIGIN, libopenvino its device plugins
  # and TBB through its own: check that, as a box without LD_LIBRARY_PATH loads it.
  name="$(unresolved "$folder" | grep -vx 'libOpenCL.so.1' || true)"
  if [[ -n "$name" ]]; then
    echo "the OpenVINO plugin in $folder needs libraries that are not there: $name" >&2
    exit 1
  fi
  if command -v readelf >/dev/null && ! readelf -d "$folder/$link" | grep -qE '(RUNPATH|RPATH).*\$ORIGIN'; then
    echo "the OpenVINO plugin has no \$ORIGIN run path: it will not find libopenvino beside it" >&2
    exit 1
  fi
  echo "$pins" >"$stamp"
}

install_cpu
echo "ONNX Runtime $VERSION ($arch) installed at $dest/lib/libonnxruntime.so"
if $gpu; then
  install_gpu
  echo "ONNX Runtime $VERSION CUDA build at $dest/gpu/lib/libonnxruntime.so" \
    "(providers: $(cd "$dest/gpu/lib" && echo libonnxruntime_providers_*.so)), NVIDIA's CUDA and cuDNN" \
    "libraries in $dest/gpu/lib/cuda (only NVIDIA's driver is needed besides)"
fi
if $openvino; then
  install_openvino
  echo "OpenVINO plugin provider ${OPENVINO_WHEEL#*==} at" \
    "$dest/lib/openvino/libonnxruntime_providers_openvino_plugin.so (Lookout registers it with the CPU library beside it)"
fi
