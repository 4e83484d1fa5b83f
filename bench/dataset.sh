#!/usr/bin/env bash
# What keeping the escalation dataset costs (not part of the test suite). A real `lookout run` (release
# build) with the fixture model answers a yes/no question as fast as it can, every answer escalated to a
# loopback chat-completions server; it runs with the dataset off and on, in alternating rounds, and the
# script reports answers and escalations per second and CPU time per answer for each, as ratios "on"
# over "off". Then it times `lookout dataset stats` and `lookout dataset export` on the folder the runs
# filled, and loading the export with Hugging Face datasets when tests/dataset/python-env.sh has made
# its environment.
#   bench/dataset.sh [SECONDS_PER_RUN=20] [ROUNDS=2]
# Needs mosquitto (deploy/install-deps.sh --test), the ONNX Runtime library
# (deploy/fetch-onnxruntime.sh) and `cargo build --release`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
seconds="${1:-20}"
rounds="${2:-2}"
lookout="$root/target/release/lookout"
work="$(mktemp -d)"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

broker_port="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\n' "$broker_port" \
  "$( [[ "$(id -u)" -eq 0 ]] && echo "user root" )" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
broker=$!

# The cloud: every chat completion answers "yes", as the router would, with its provider header.
cloud_port="$(free_port)"
python3 - "$cloud_port" <<'EOF' &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Cloud(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"model": "big-vlm", "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-inference-provider", "loopback")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Cloud).serve_forever()
EOF
cloud=$!
trap 'kill $broker $cloud 2>/dev/null; rm -rf "$work"' EXIT
sleep 1

config() { # $1: true or false (the dataset)
  cat <<EOF
[device]
id = "dataset-bench"
[mqtt]
url = "mqtt://127.0.0.1:$broker_port"
stats_interval_secs = 1.0
[http]
enabled = false
[vision]
model_dir = "$root/models/fixtures/smolvlm-micro"
[[cameras]]
id = "cam"
source = { kind = "synthetic", width = 640, height = 480, fps = 20.0 }
[[tasks]]
id = "door"
camera = "cam"
question = "Is the door open?"
kind = "yes_no"
trigger = { kind = "interval", secs = 0.01 }
[escalation]
enabled = true
mode = "always"
min_interval_secs = 0.0
duplicate_distance = -1
[escalation.budget]
per_minute = 1000000
per_hour = 1000000
per_day = 1000000
[[escalation.endpoints]]
name = "loopback"
url = "http://127.0.0.1:$cloud_port/v1"
model = "big-vlm"
token_env = ""
[dataset]
enabled = $1
cameras = ["cam"]
dir = "$work/dataset"
EOF
}

# One run: prints "answers escalations cpu_seconds" for its last `seconds`.
run() { # $1: true or false
  config "$1" > "$work/config.toml"
  LOOKOUT_STATE_DIR="$work/state-$1" LOOKOUT_LOG=warn "$lookout" run --config "$work/config.toml" 2>>"$work/daemon.log" &
  local daemon=$!
  sleep 3 # the model loads and the first answers come
  local stats_before cpu_before
  stats_before="$(mosquitto_sub -p "$broker_port" -t lookout/dataset-bench/stats -C 1 -W 10)"
  cpu_before="$(awk '{print $14 + $15}' "/proc/$daemon/stat")"
  sleep "$seconds"
  local stats_after cpu_after
  stats_after="$(mosquitto_sub -p "$broker_port" -t lookout/dataset-bench/stats -C 1 -W 10)"
  cpu_after="$(awk '{print $14 + $15}' "/proc/$daemon/stat")"
  kill -TERM "$daemon"
  wait "$daemon" || true
  python3 - "$stats_before" "$stats_after" "$cpu_before" "$cpu_after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ticks = (float(sys.argv[4]) - float(sys.argv[3])) / float(sys.argv[5])
answers = after["answers"] - before["answers"]
escalated = after["escalations"]["by_outcome"].get("answered", 0) - before["escalations"]["by_outcome"].get("answered", 0)
print(answers, escalated, ticks)
EOF
}

echo "| round | dataset | answers/s | escalations/s | CPU ms per answer |"
echo "|---|---|---|---|---|"
declare -A total_answers total_cpu
for round in $(seq "$rounds"); do
  for dataset in false true; do
    read -r answers escalated cpu < <(run "$dataset")
    total_answers[$dataset]=$(( ${total_answers[$dataset]:-0} + answers ))
    total_cpu[$dataset]="$(python3 -c "print(${total_cpu[$dataset]:-0} + $cpu)")"
    python3 -c "print(f'| $round | $dataset | {$answers / $seconds:.1f} | {$escalated / $seconds:.1f} | {1000 * $cpu / max($answers, 1):.1f} |')"
  done
done
python3 -c "
off, on = ${total_answers[false]}, ${total_answers[true]}
print(f'\nAnswers with the dataset on / off: {on / off:.2f}; CPU per answer on / off: {(${total_cpu[true]} / on) / (${total_cpu[false]} / off):.2f}')"

echo
"$lookout" dataset stats --dir "$work/dataset"
started=$(date +%s.%N)
"$lookout" dataset export --dir "$work/dataset" --to "$work/export"
echo "export took $(python3 -c "print(f'{$(date +%s.%N) - $started:.2f}')") s"
python="$root/target/dataset-python/bin/python"
if [[ -x "$python" ]]; then
  started=$(date +%s.%N)
  HF_HOME="$work/hf" HF_HUB_OFFLINE=1 "$python" "$root/tests/dataset/load.py" "$work/export" 2>/dev/null \
    | python3 -c "import json, sys; print('datasets loaded', json.load(sys.stdin)['num_rows'], 'rows')"
  echo "loading it took $(python3 -c "print(f'{$(date +%s.%N) - $started:.2f}')") s"
fi
