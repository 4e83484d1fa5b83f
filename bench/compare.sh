#!/usr/bin/env bash
# Lookout against the Python ONNX Runtime reference loop, on the same graphs, image and thread count, in one
# run (the machine is shared and noisy: compare the ratios, not the absolute figures across runs).
#   bench/compare.sh            -> bench/results.md
# Builds (once) a full-size random-weight SmolVLM2-256M export with its int8 variant in bench/.work (about
# 1 GB, a few minutes, Python packages from PyPI); speed does not depend on the weights' values.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="${BENCH_WORK:-$here/.work}"
threads="${BENCH_THREADS:-2}"
tokens="${BENCH_TOKENS:-48}"
mkdir -p "$work"

if [[ ! -x "$work/venv/bin/python" ]]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q torch torchvision transformers onnx onnxruntime onnxscript tokenizers pillow num2words
fi
py="$work/venv/bin/python"
model="$work/smolvlm2-256m"
if [[ ! -f "$model/onnx/decoder_model_merged_int8.onnx" ]]; then
  "$py" "$root/models/fixtures/build_export.py" --preset 256m --out "$model"
  "$py" "$root/models/fixtures/quantize.py" "$model/onnx" decoder_model_merged,vision_encoder
fi
# The quantizer leaves the (gather-only) embedding in fp32: the int8 variant uses it as is.
ln -sf embed_tokens.onnx "$model/onnx/embed_tokens_int8.onnx"
"$py" -c "
from PIL import Image; import numpy as np
y, x = np.mgrid[0:480, 0:640]
Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 251], -1).astype(np.uint8)).save('$work/frame.png')"

(cd "$root" && cargo build --release --quiet)
lookout="$root/target/release/lookout"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/lib/libonnxruntime.so}"

results="$work/results.jsonl"
: > "$results"
for variant in fp32 int8; do
  suffix=""; [[ "$variant" == fp32 ]] || suffix="_$variant"
  for split in 0 1; do
    runs=3; [[ "$split" == 1 ]] && runs=1
    flag=""; [[ "$split" == 1 ]] && flag="--split"
    echo "== $variant split=$split" >&2
    python_json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_onnx.py" --model "$model" --suffix "$suffix" \
      --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" 2>"$work/python.err")"
    python_rss="$(grep peak_rss_mb "$work/python.err" | tail -1 | cut -d' ' -f2)"
    lookout_json="$(LOOKOUT_LOG=warn "$lookout" bench --model "$model" --variant "$variant" --image "$work/frame.png" $flag \
      --threads "$threads" --runs "$runs" --max-new-tokens "$tokens" --json)"
    processor_json="$("$py" "$here/reference/processor_time.py" "$model" "$work/frame.png" "$split" 2>/dev/null)"
    "$py" -c "
import json, sys
p, l, r = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({'variant': sys.argv[4], 'split': sys.argv[5] == '1', 'python': p, 'python_rss_mb': float(sys.argv[6]), 'lookout': l, 'processor': r}))
" "$python_json" "$lookout_json" "$processor_json" "$variant" "$split" "$python_rss" >> "$results"
  done
done

"$py" - "$results" "$threads" "$tokens" > "$here/results.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"# Lookout vs the Python ONNX Runtime loop\n")
print(f"SmolVLM2-256M geometry, random weights; 640x480 frame; {sys.argv[2]} threads; up to {sys.argv[3]} new tokens; ")
print("one run of `bench/compare.sh` (ratios matter: the machine is shared). TTFT = vision encoder + prefill.\n")
print("| variant | split | TTFT Python ms | TTFT Lookout ms | ratio | decode Python tok/s | decode Lookout tok/s | ratio | preprocess transformers ms | preprocess Lookout ms | speed-up | RSS Python MB | RSS Lookout MB | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    p, l, q = r["python"], r["lookout"], r["processor"]
    ttft_p, ttft_l = p["ttft_s"] * 1000, l["ttft_ms"]
    dec_p, dec_l = p["decode_tok_per_s"], l["decode_tokens_per_s"]
    pre_p, pre_l = q["processor_ms"], l["preprocess_ms"]
    rss_p, rss_l = r["python_rss_mb"], l["peak_rss_mb"]
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {ttft_p:.0f} | {ttft_l:.0f} | {ttft_l / ttft_p:.2f} | "
          f"{dec_p:.1f} | {dec_l:.1f} | {dec_l / max(dec_p, 1e-9):.2f} | {pre_p:.1f} | {pre_l:.1f} | {pre_p / max(pre_l, 1e-9):.1f}x | "
          f"{rss_p:.0f} | {rss_l:.0f} | {rss_l / rss_p:.2f} |")
print("\nSeveral questions about one frame in one job (Lookout alone; the image is encoded once and the")
print("prompt prefix it shares prefilled once), as a multiple of one question's time in the same run:\n")
print("| variant | split | 3 yes_no / 1 | 3 text of 32 tokens / 1 |")
print("|---|---|---|---|")
for r in rows:
    l = r["lookout"]
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {l['three_yes_no_ratio']:.2f} | {l['three_text_ratio']:.2f} |")
PY
cat "$here/results.md"
