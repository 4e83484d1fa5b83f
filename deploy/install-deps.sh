#!/usr/bin/env bash
# Installs the system packages Lookout needs on Debian or Ubuntu, only those missing (safe to re-run).
#   deploy/install-deps.sh          build dependencies (libclang for the camera bindings)
#   deploy/install-deps.sh --test   also what the tests start: mosquitto, its clients, openssl, the
#                                   kill command (procps; unshare comes with util-linux, always present),
#                                   systemd-analyze (systemd), which checks the unit, and Python's venv
#                                   (the dataset tests load exports with Hugging Face datasets)
# Note: on a machine with systemd, installing mosquitto also starts it on 127.0.0.1:1883, the embedded
# broker's default address; `lookout run` then says so and can use it through LOOKOUT_MQTT_URL.
set -euo pipefail

packages=(libclang-dev)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(mosquitto mosquitto-clients openssl procps systemd python3-venv)
fi

# The ONNX Runtime library comes from its PyPI wheel (deploy/fetch-onnxruntime.sh).
if ! python3 -m pip --version >/dev/null 2>&1; then
  packages+=(python3 python3-pip)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then
    sudo="sudo"
  fi
  echo "Installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs) and re-run." >&2
  exit 1
fi
# `make lint` (and CI) run rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
