#!/usr/bin/env bash
# Soak test of the outbox (not part of the test suite): a real `lookout run` with the fixture model makes
# answers as fast as it can while a persistent mosquitto is restarted over and over; a persistent
# mosquitto_sub records what arrives. At the end it reports answers stored, delivered, duplicated and
# lost, and the daemon's resident memory at the start and the end.
#   bench/soak-outbox.sh [ANSWERS=10000] [SECONDS_BETWEEN_RESTARTS=5]
# Needs mosquitto and mosquitto-clients (deploy/install-deps.sh --test) and the ONNX Runtime library
# (deploy/fetch-onnxruntime.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
wanted="${1:-10000}"
every="${2:-5}"
work="$(mktemp -d)"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/
autosave_interval 1
max_queued_messages 0
$( [[ "$(id -u)" -eq 0 ]] && echo "user root" )
EOF

broker=""
start_broker() {
  mosquitto -c "$work/mosquitto.conf" 2>>"$work/mosquitto.log" &
  broker=$!
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
    sleep 0.05
  done
  echo "mosquitto did not start" >&2
  exit 1
}
stop_broker() {
  kill -TERM "$broker"
  wait "$broker" || true
}
lookout_pid=""
sub_pid=""
cleanup() {
  [[ -n "$lookout_pid" ]] && kill "$lookout_pid" 2>/dev/null || true
  [[ -n "$sub_pid" ]] && kill "$sub_pid" 2>/dev/null || true
  [[ -n "$broker" ]] && kill "$broker" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

tasks=""
for task in a b c d; do
  tasks+="
[[tasks]]
id = \"$task\"
camera = \"cam\"
question = \"Is it bright ($task)?\"
kind = \"yes_no\"
trigger = { kind = \"interval\", secs = 0.02 }"
done
write_config() {
  cat > "$work/lookout.toml" <<EOF
[device]
id = "soak"
state_dir = "$work/state"
[mqtt]
url = "mqtt://127.0.0.1:$port"
stats_interval_secs = 1.0
[vision]
model_dir = "$root/models/fixtures/smolvlm-micro"
threads = 1
[[cameras]]
id = "cam"
source = { kind = "synthetic", width = 64, height = 48, fps = 50.0 }
$1
EOF
}

(cd "$root" && cargo build --release --quiet)
start_broker
mosquitto_sub -h 127.0.0.1 -p "$port" -i soak-sub -c -q 1 -t 'lookout/soak/cam/+/answer' > "$work/received.jsonl" 2>/dev/null &
sub_pid=$!
sleep 0.5
write_config "$tasks"
LOOKOUT_LOG="warn,lookout::publish=debug" "$root/target/release/lookout" run --config "$work/lookout.toml" 2> "$work/lookout.log" &
lookout_pid=$!

stored() { grep -c "Stored an answer in the outbox." "$work/lookout.log" || true; }
rss() { awk '/VmRSS/ { print $2 / 1024 }' "/proc/$lookout_pid/status"; }
until [[ "$(stored)" -ge 100 ]]; do sleep 0.2; done
rss_start="$(rss)"
started=$SECONDS
restarts=0
while [[ "$(stored)" -lt "$wanted" ]]; do
  sleep "$every"
  stop_broker
  sleep 2
  start_broker
  restarts=$((restarts + 1))
  echo "$(stored) answers stored, $restarts broker restarts" >&2
done
# Stop making answers (a reload onto a config without tasks), then wait for the outbox to empty.
write_config ""
kill -HUP "$lookout_pid"
grep "Stored an answer in the outbox." "$work/lookout.log" | sed 's/.*id=\([0-9a-f-]*\).*/\1/' | sort -u > "$work/stored.ids"
for _ in $(seq 240); do
  grep -o '"id":"[0-9a-f-]*"' "$work/received.jsonl" | cut -d'"' -f4 | sort -u > "$work/received.ids"
  [[ -z "$(comm -23 "$work/stored.ids" "$work/received.ids")" ]] && break
  sleep 0.5
done
grep "Stored an answer in the outbox." "$work/lookout.log" | sed 's/.*id=\([0-9a-f-]*\).*/\1/' | sort -u > "$work/stored.ids"
rss_end="$(rss)"
total_stored="$(wc -l < "$work/stored.ids")"
received_lines="$(grep -c '"id":"' "$work/received.jsonl")"
unique="$(comm -12 "$work/stored.ids" "$work/received.ids" | wc -l)"
lost="$(comm -23 "$work/stored.ids" "$work/received.ids" | wc -l)"
printf 'answers stored %d, delivered %d, duplicates %d, lost %d; %d broker restarts in %d s; RSS %.1f MB at start, %.1f MB at the end\n' \
  "$total_stored" "$unique" "$((received_lines - unique))" "$lost" "$restarts" "$((SECONDS - started))" "$rss_start" "$rss_end"
