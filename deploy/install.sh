#!/usr/bin/env bash
# Installs Lookout as a systemd service, in the layout the Debian package uses:
#   /usr/bin/lookout                           the daemon
#   /usr/lib/systemd/system/lookout.service    the unit (sandboxed; Type=notify with a watchdog)
#   /usr/lib/sysusers.d/lookout.conf           the system user lookout (groups video and render)
#   /usr/lib/lookout/libonnxruntime.so         the pinned ONNX Runtime library, with what lies beside it:
#                                              the providers of a GPU build, and folders of accelerator
#                                              libraries (cuda/, plugin providers such as openvino/)
#   /etc/lookout/lookout.toml                  the config (the documented defaults; never overwritten)
#   /etc/lookout/hf_token                      the cloud token, read through LoadCredential= (empty: none)
#   /var/lib/lookout/                          state; models/ under it (the config's default model_dir)
#
#   deploy/install.sh [OPTIONS]              install or update (safe to re-run)
#   deploy/install.sh --uninstall [--purge]  remove it; --purge also removes config, state and the user
# Options:
#   --destdir DIR       install under DIR, as a package build does (no users, no systemctl)
#   --binary FILE       the lookout binary (default: target/release/lookout, built if missing)
#   --onnxruntime DIR   a folder holding libonnxruntime.so (default: fetched by fetch-onnxruntime.sh; its
#                       CUDA build when `fetch-onnxruntime.sh --gpu` put one in .ort/gpu)
#   --with-model [V]    also fetch the default model, variant V (default int8), with `lookout models fetch`
#   --no-start          enable the service but do not (re)start it
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
destdir=""
binary=""
onnxruntime=""
model_variant=""
uninstall=false
purge=false
start=true

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($# > 0)); do
  case "$1" in
    --destdir) destdir="${2:?--destdir needs a folder}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
    --onnxruntime) onnxruntime="${2:?--onnxruntime needs a folder}"; shift 2 ;;
    --with-model)
      model_variant="int8"
      if [[ $# -gt 1 && "$2" != --* ]]; then model_variant="$2"; shift; fi
      shift ;;
    --no-start) start=false; shift ;;
    --uninstall) uninstall=true; shift ;;
    --purge) purge=true; shift ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
done

if [[ -n "$destdir" ]]; then
  destdir="$(mkdir -p "$destdir" && cd "$destdir" && pwd)"
fi
root="$destdir"
# Users and services are the real system's business: only touched when installing to /.
live=false
if [[ -z "$destdir" ]]; then
  live=true
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "install.sh: run as root (or give --destdir to install under a folder)" >&2
    exit 1
  fi
fi
systemd_running=false
if $live && [[ -d /run/systemd/system ]]; then
  systemd_running=true
fi

bin_path="$root/usr/bin/lookout"
unit_path="$root/usr/lib/systemd/system/lookout.service"
sysusers_path="$root/usr/lib/sysusers.d/lookout.conf"
lib_dir="$root/usr/lib/lookout"
config_dir="$root/etc/lookout"
state_dir="$root/var/lib/lookout"

if $uninstall; then
  if $systemd_running; then
    systemctl disable --now lookout.service 2>/dev/null || true
  fi
  rm -f "$bin_path" "$unit_path" "$sysusers_path"
  rm -rf "$lib_dir"
  if $purge; then
    rm -rf "$config_dir" "$state_dir"
    if $live && id lookout >/dev/null 2>&1; then
      userdel lookout || echo "install.sh: could not remove the user lookout" >&2
    fi
  fi
  if $systemd_running; then
    systemctl daemon-reload
  fi
  if $purge; then
    echo "Lookout removed, with its config and state."
  else
    echo "Lookout removed; kept ${config_dir:-/etc/lookout} and ${state_dir} (--purge removes them)."
  fi
  exit 0
fi

if [[ -z "$binary" ]]; then
  binary="$here/target/release/lookout"
  if [[ ! -x "$binary" ]]; then
    echo "Building Lookout (cargo build --release)..."
    (cd "$here" && cargo build --release --quiet)
  fi
fi
if [[ ! -x "$binary" ]]; then
  echo "install.sh: $binary is not an executable file" >&2
  exit 1
fi
if [[ -z "$onnxruntime" ]]; then
  onnxruntime="$here/.ort/lib"
  "$here/deploy/fetch-onnxruntime.sh" "$here/.ort"
  if [[ -f "$here/.ort/gpu/lib/libonnxruntime.so" ]]; then
    onnxruntime="$here/.ort/gpu/lib"
  fi
fi
library="$(readlink -f "$onnxruntime/libonnxruntime.so" 2>/dev/null || true)"
if [[ ! -f "$library" ]]; then
  echo "install.sh: no libonnxruntime.so in $onnxruntime" >&2
  exit 1
fi

install -d -m 0755 "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" "$lib_dir"
install -m 0755 "$binary" "$bin_path"
install -m 0644 "$here/systemd/lookout.service" "$unit_path"
install -m 0644 "$here/deploy/sysusers.d/lookout.conf" "$sysusers_path"
# The versioned file under the unversioned name the unit's ORT_DYLIB_PATH gives.
install -m 0644 "$library" "$lib_dir/libonnxruntime.so"
# What the library and Lookout find beside it: a GPU build's providers, which ONNX Runtime loads from its
# own folder, and folders of accelerator libraries (cuda/, which Lookout preloads; plugin providers such
# as openvino/, which it registers). Replaced whole, so an update leaves no stale file.
for provider in "$onnxruntime"/libonnxruntime_providers_*.so; do
  if [[ -f "$provider" ]]; then
    install -m 0644 "$provider" "$lib_dir/"
  fi
done
for folder in "$onnxruntime"/*/; do
  if [[ ! -d "$folder" ]]; then
    continue
  fi
  name="$(basename "$folder")"
  rm -rf "$lib_dir/$name.new"
  cp -R "$folder" "$lib_dir/$name.new"
  rm -rf "$lib_dir/$name"
  mv "$lib_dir/$name.new" "$lib_dir/$name"
done

if $live; then
  systemd-sysusers "$sysusers_path"
fi
install -d -m 0755 "$config_dir"
if [[ ! -e "$config_dir/lookout.toml" ]]; then
  "$bin_path" config example >"$config_dir/lookout.toml.new"
  chmod 0644 "$config_dir/lookout.toml.new"
  mv "$config_dir/lookout.toml.new" "$config_dir/lookout.toml"
else
  echo "Kept the existing $config_dir/lookout.toml."
fi
if [[ ! -e "$config_dir/hf_token" ]]; then
  install -m 0600 /dev/null "$config_dir/hf_token"
fi
install -d -m 0750 "$state_dir"
if $live; then
  chown lookout:lookout "$state_dir"
fi

if [[ -n "$model_variant" ]]; then
  model_dir="$state_dir/models/SmolVLM2-256M-Video-Instruct"
  "$bin_path" models fetch --variant "$model_variant" --dir "$model_dir"
  if $live; then
    chown -R lookout:lookout "$state_dir/models"
  fi
fi

if $systemd_running; then
  systemctl daemon-reload
  systemctl enable lookout.service
  if $start; then
    systemctl restart lookout.service
  fi
fi
echo "Lookout installed under ${root:-/}."
