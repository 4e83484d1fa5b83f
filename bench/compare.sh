#!/usr/bin/env bash
# Lookout against the Python ONNX Runtime reference loop (same graphs) and transformers' PyTorch `generate`
# (same geometry), on the same image and thread count, in one run (the machine is shared and noisy: compare
# the ratios, not the absolute figures across runs).
#   bench/compare.sh            -> bench/results.md and bench/results.png
# Builds (once) a full-size random-weight SmolVLM2-256M export with its int8 and q4 variants in bench/.work
# (about 1.5 GB, a few minutes, Python packages from PyPI); speed does not depend on the weights' values.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="${BENCH_WORK:-$here/.work}"
threads="${BENCH_THREADS:-2}"
tokens="${BENCH_TOKENS:-64}"
mkdir -p "$work"

if [[ ! -x "$work/venv/bin/python" ]]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q torch torchvision transformers onnx onnxruntime onnxscript tokenizers pillow num2words
fi
"$work/venv/bin/python" -c "import matplotlib" 2>/dev/null || "$work/venv/bin/pip" install -q matplotlib
py="$work/venv/bin/python"
model="$work/smolvlm2-256m"
if [[ ! -f "$model/onnx/decoder_model_merged_q4.onnx" ]]; then
  "$py" "$root/models/fixtures/build_export.py" --preset 256m --out "$model"
  "$py" "$root/models/fixtures/quantize.py" "$model/onnx" decoder_model_merged,vision_encoder
fi
# The quantizer leaves the (gather-only) embedding in fp32: the quantized variants use it as is.
ln -sf embed_tokens.onnx "$model/onnx/embed_tokens_int8.onnx"
ln -sf embed_tokens.onnx "$model/onnx/embed_tokens_q4.onnx"
"$py" -c "
from PIL import Image; import numpy as np
y, x = np.mgrid[0:480, 0:640]
Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 251], -1).astype(np.uint8)).save('$work/frame.png')"

(cd "$root" && cargo build --release --quiet)
lookout="$root/target/release/lookout"
# Lookout loads the very ONNX Runtime library the Python loop uses: the comparison is of the code around it.
ORT_DYLIB_PATH="$("$py" -c 'import glob, os, onnxruntime
print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0])')"
export ORT_DYLIB_PATH
ort_version="$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)')"

results="$work/results.jsonl"
: > "$results"
for variant in fp32 int8 q4; do
  suffix=""; [[ "$variant" == fp32 ]] || suffix="_$variant"
  for split in 0 1; do
    runs=3; [[ "$split" == 1 ]] && runs=1
    flag=""; [[ "$split" == 1 ]] && flag="--split"
    echo "== $variant split=$split" >&2
    python_json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_onnx.py" --model "$model" --suffix "$suffix" \
      --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" --runs "$runs" 2>"$work/python.err")"
    python_rss="$(grep peak_rss_mb "$work/python.err" | tail -1 | cut -d' ' -f2)"
    lookout_json="$(LOOKOUT_LOG=warn "$lookout" bench --model "$model" --variant "$variant" --image "$work/frame.png" $flag \
      --threads "$threads" --runs "$runs" --max-new-tokens "$tokens" --json)"
    processor_json="$("$py" "$here/reference/processor_time.py" "$model" "$work/frame.png" "$split" 2>/dev/null)"
    # PyTorch runs fp32 only: it is the unquantized reference for every variant.
    if [[ "$variant" == fp32 ]]; then
      torch_json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_torch.py" --model "$model" \
        --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" 2>"$work/torch.err")"
      torch_rss="$(grep peak_rss_mb "$work/torch.err" | tail -1 | cut -d' ' -f2)"
      printf '%s' "$torch_json" > "$work/torch_split$split.json"
      printf '%s' "$torch_rss" > "$work/torch_rss_split$split"
    fi
    "$py" -c "
import json, sys
p, l, r, t = (json.loads(arg) for arg in sys.argv[1:5])
print(json.dumps({'variant': sys.argv[5], 'split': sys.argv[6] == '1', 'python': p, 'python_rss_mb': float(sys.argv[7]),
                  'lookout': l, 'processor': r, 'torch': t, 'torch_rss_mb': float(sys.argv[8])}))
" "$python_json" "$lookout_json" "$processor_json" "$(cat "$work/torch_split$split.json")" "$variant" "$split" \
      "$python_rss" "$(cat "$work/torch_rss_split$split")" >> "$results"
  done
done

"$py" - "$results" "$threads" "$tokens" "$ort_version" > "$here/results.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"# Lookout vs the Python ONNX Runtime loop and transformers PyTorch\n")
print(f"SmolVLM2-256M geometry, random weights; 640x480 frame; {sys.argv[2]} threads; up to {sys.argv[3]} new tokens; ")
print(f"ONNX Runtime {sys.argv[4]} for both ONNX loops (Lookout loads the wheel's library). One run of `bench/compare.sh`")
print("(ratios matter: the machine is shared). TTFT = vision encoder + prefill. Both ONNX loops report the median")
print("of the same number of answers in one process (3 for one image, 1 for 13 tiles). Preprocessing is timed")
print("alone on both sides, 5 times in a row (median); Lookout writes into the buffer of the run before, as")
print("it does from one answer to the next. Inside an answer, just after the model has run, Lookout's takes")
print("longer (the `preprocess` stage of `lookout bench`).\n")
print("| variant | split | TTFT PyTorch ms | TTFT Lookout / PyTorch | decode PyTorch tok/s | answer PyTorch ms | answer Lookout ms | CPU PyTorch ms | CPU Python ms | CPU Lookout ms | RSS PyTorch MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    t, p, l = r["torch"], r["python"], r["lookout"]
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {t['ttft_s'] * 1000:.0f} | {l['ttft_ms'] / (t['ttft_s'] * 1000):.2f} | "
          f"{t['decode_tok_per_s']:.1f} | {t['answer_s'] * 1000:.0f} | {l['answer_ms']:.0f} | {t['cpu_s'] * 1000:.0f} | {p['cpu_s'] * 1000:.0f} | "
          f"{l['cpu_ms_per_answer']:.0f} | {r['torch_rss_mb']:.0f} |")
print(f"\nPyTorch: fp32 with random weights of the same geometry, `generate` of {sys.argv[3]} tokens (min_new_tokens fixes the length).")
print("Answer = the whole answer; CPU = processor time of all threads per answer.\n")
print("| variant | split | TTFT Python ms | TTFT Lookout ms | ratio | decode Python tok/s | decode Lookout tok/s | ratio | preprocess transformers ms | preprocess Lookout ms (alone) | speed-up | RSS Python MB | RSS Lookout MB | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    p, l, q = r["python"], r["lookout"], r["processor"]
    ttft_p, ttft_l = p["ttft_s"] * 1000, l["ttft_ms"]
    dec_p, dec_l = p["decode_tok_per_s"], l["decode_tokens_per_s"]
    pre_p, pre_l = q["processor_ms"], l["preprocess_alone_ms"]
    rss_p, rss_l = r["python_rss_mb"], l["peak_rss_mb"]
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {ttft_p:.0f} | {ttft_l:.0f} | {ttft_l / ttft_p:.2f} | "
          f"{dec_p:.1f} | {dec_l:.1f} | {dec_l / max(dec_p, 1e-9):.2f} | {pre_p:.1f} | {pre_l:.1f} | {pre_p / max(pre_l, 1e-9):.1f}x | "
          f"{rss_p:.0f} | {rss_l:.0f} | {rss_l / rss_p:.2f} |")
print("\nDecode against its memory-bandwidth bound: decoding a token reads every decoder weight once, so")
print("tokens/s can at most be the machine's read bandwidth (measured by `lookout bench` with the same threads)")
print("over the decoder's weight bytes.\n")
print("| variant | split | decoder weights MB | read bandwidth GB/s | bound tok/s | Lookout tok/s | fraction of bound |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    l = r["lookout"]
    bound = l["memory_read_gb_per_s"] * 1e9 / max(l["decoder_weight_bytes"], 1)
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {l['decoder_weight_bytes'] / 1e6:.0f} | {l['memory_read_gb_per_s']:.1f} | "
          f"{bound:.0f} | {l['decode_tokens_per_s']:.1f} | {l['decode_bandwidth_fraction']:.2f} |")
print("\nSeveral questions about one frame in one job (Lookout alone; the image is encoded once, the")
print("prompt prefix it shares prefilled once, and text answers decoded together), as a multiple of one")
print("question's time in the same run; and two cameras' jobs answered together against in turn:\n")
print("| variant | split | 3 yes_no / 1 | 3 text of 32 tokens / 1 | 2 cameras' text answers, together / in turn |")
print("|---|---|---|---|---|")
for r in rows:
    l = r["lookout"]
    print(f"| {r['variant']} | {'13 tiles' if r['split'] else '1 image'} | {l['three_yes_no_ratio']:.2f} | {l['three_text_ratio']:.2f} | "
          f"{l['two_cameras_ratio']:.2f} |")
PY

"$py" - "$results" "$here/results.png" <<'PY'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [json.loads(line) for line in open(sys.argv[1])]
labels = [f"{r['variant']}\n{'13 tiles' if r['split'] else '1 image'}" for r in rows]
series = {
    "time to first token (s)": [(r["torch"]["ttft_s"], r["python"]["ttft_s"], r["lookout"]["ttft_ms"] / 1000) for r in rows],
    "decode (tokens/s)": [(r["torch"]["decode_tok_per_s"], r["python"]["decode_tok_per_s"], r["lookout"]["decode_tokens_per_s"]) for r in rows],
}
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, (title, values) in zip(axes, series.items()):
    width = 0.27
    for k, name in enumerate(["transformers PyTorch (fp32)", "Python ONNX Runtime loop", "Lookout"]):
        ax.bar([i + (k - 1) * width for i in range(len(rows))], [v[k] for v in values], width, label=name)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_title(title)
axes[0].set_yscale("log")
axes[1].legend(fontsize=8)
fig.suptitle("SmolVLM2-256M on this machine, one run of bench/compare.sh")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
PY
cat "$here/results.md"
