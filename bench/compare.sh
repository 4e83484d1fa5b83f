#!/usr/bin/env bash
# Lookout against the Python ONNX Runtime reference loop (same graphs) and transformers' PyTorch `generate`
# (same geometry), on the same image and thread count, in one run (the machine is shared and noisy: compare
# the ratios, not the absolute figures across runs).
#   bench/compare.sh            -> bench/results.md and bench/results.png
# A one-image answer takes seconds, and the machine's speed drifts from one minute to the next: those
# rows are timed in BENCH_ROUNDS rounds (default 3), the Python loop and Lookout in turn, and report the
# median of the rounds' ratios with their range. A 13-tile answer takes minutes: those rows run in
# BENCH_SPLIT_ROUNDS rounds (default 1).
# Builds (once) a full-size random-weight SmolVLM2-256M export with its int8 and q4 variants in bench/.work
# (about 1.5 GB, a few minutes, Python packages from PyPI); speed does not depend on the weights' values.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="${BENCH_WORK:-$here/.work}"
threads="${BENCH_THREADS:-2}"
tokens="${BENCH_TOKENS:-64}"
rounds="${BENCH_ROUNDS:-3}"
split_rounds="${BENCH_SPLIT_ROUNDS:-1}"
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
    these_rounds="$rounds"; [[ "$split" == 1 ]] && these_rounds="$split_rounds"
    for round in $(seq "$these_rounds"); do
      echo "== $variant split=$split round $round/$these_rounds" >&2
      python_json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_onnx.py" --model "$model" --suffix "$suffix" \
        --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" --runs "$runs" 2>"$work/python.err")"
      python_rss="$(grep peak_rss_mb "$work/python.err" | tail -1 | cut -d' ' -f2)"
      lookout_json="$(LOOKOUT_LOG=warn "$lookout" bench --model "$model" --variant "$variant" --image "$work/frame.png" $flag \
        --threads "$threads" --runs "$runs" --max-new-tokens "$tokens" --json)"
      processor_json="$("$py" "$here/reference/processor_time.py" "$model" "$work/frame.png" "$split" 2>/dev/null)"
      # PyTorch runs fp32 only, once: it is the unquantized reference for every variant.
      if [[ "$variant" == fp32 && "$round" == 1 ]]; then
        torch_json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_torch.py" --model "$model" \
          --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" 2>"$work/torch.err")"
        torch_rss="$(grep peak_rss_mb "$work/torch.err" | tail -1 | cut -d' ' -f2)"
        printf '%s' "$torch_json" > "$work/torch_split$split.json"
        printf '%s' "$torch_rss" > "$work/torch_rss_split$split"
      fi
      "$py" -c "
import json, sys
p, l, r, t = (json.loads(arg) for arg in sys.argv[1:5])
print(json.dumps({'variant': sys.argv[5], 'split': sys.argv[6] == '1', 'round': int(sys.argv[9]), 'python': p,
                  'python_rss_mb': float(sys.argv[7]), 'lookout': l, 'processor': r, 'torch': t,
                  'torch_rss_mb': float(sys.argv[8])}))
" "$python_json" "$lookout_json" "$processor_json" "$(cat "$work/torch_split$split.json")" "$variant" "$split" \
        "$python_rss" "$(cat "$work/torch_rss_split$split")" "$round" >> "$results"
    done
  done
done

"$py" - "$results" "$threads" "$tokens" "$ort_version" "$here/results.png" > "$here/results.md" <<'PY'
import json, statistics, sys
from itertools import groupby

# One group per variant and split: its rounds, each a run of the Python loop and of Lookout in turn.
lines = [json.loads(line) for line in open(sys.argv[1])]
groups = [list(rounds) for _, rounds in groupby(lines, key=lambda r: (r["variant"], r["split"]))]
name = lambda g: f"| {g[0]['variant']} | {'13 tiles' if g[0]['split'] else '1 image'} |"
median = lambda g, pick: statistics.median(pick(r) for r in g)
round_count = lambda split: next(len(g) for g in groups if g[0]["split"] == split)


def ratio(g, pick, form="{:.2f}"):
    """The median of the rounds' ratios, with their range when there are several."""
    values = sorted(pick(r) for r in g)
    text = form.format(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({form.format(values[0])}-{form.format(values[-1])})"


print("# Lookout vs the Python ONNX Runtime loop and transformers PyTorch\n")
print(f"SmolVLM2-256M geometry, random weights; 640x480 frame; {sys.argv[2]} threads; up to {sys.argv[3]} new tokens; ")
print(f"ONNX Runtime {sys.argv[4]} for both ONNX loops (Lookout loads the wheel's library). One run of `bench/compare.sh`")
print("(ratios matter: the machine is shared). TTFT = vision encoder + prefill. Both ONNX loops report the median")
print("of the same number of answers in one process (3 for one image, 1 for 13 tiles). One-image rows ran in")
print(f"{round_count(False)} rounds and 13-tile rows in {round_count(True)}, the Python loop and Lookout in turn: the figures are the")
print("rounds' medians, each ratio the median of the rounds' ratios (their range in brackets). Preprocessing")
print("is timed alone on both sides, 5 times in a row (median); Lookout writes into the buffer of the run")
print("before, as it does from one answer to the next. Inside an answer, just after the model has run,")
print("Lookout's takes longer (the `preprocess` stage of `lookout bench`).\n")
print("| variant | split | TTFT PyTorch ms | TTFT Lookout / PyTorch | decode PyTorch tok/s | answer PyTorch ms | answer Lookout ms | CPU PyTorch ms | CPU Python ms | CPU Lookout ms | RSS PyTorch MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for g in groups:
    t = g[0]["torch"]
    print(f"{name(g)} {t['ttft_s'] * 1000:.0f} | {ratio(g, lambda r: r['lookout']['ttft_ms'] / (t['ttft_s'] * 1000))} | "
          f"{t['decode_tok_per_s']:.1f} | {t['answer_s'] * 1000:.0f} | {median(g, lambda r: r['lookout']['answer_ms']):.0f} | "
          f"{t['cpu_s'] * 1000:.0f} | {median(g, lambda r: r['python']['cpu_s'] * 1000):.0f} | "
          f"{median(g, lambda r: r['lookout']['cpu_ms_per_answer']):.0f} | {g[0]['torch_rss_mb']:.0f} |")
print(f"\nPyTorch: fp32 with random weights of the same geometry, `generate` of {sys.argv[3]} tokens (min_new_tokens fixes the")
print("length), run once. Answer = the whole answer; CPU = processor time of all threads per answer.\n")
print("| variant | split | TTFT Python ms | TTFT Lookout ms | ratio | decode Python tok/s | decode Lookout tok/s | ratio | preprocess transformers ms | preprocess Lookout ms (alone) | speed-up | RSS Python MB | RSS Lookout MB | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for g in groups:
    ttft_p, ttft_l = (lambda r: r["python"]["ttft_s"] * 1000), (lambda r: r["lookout"]["ttft_ms"])
    dec_p, dec_l = (lambda r: r["python"]["decode_tok_per_s"]), (lambda r: r["lookout"]["decode_tokens_per_s"])
    pre_p, pre_l = (lambda r: r["processor"]["processor_ms"]), (lambda r: r["lookout"]["preprocess_alone_ms"])
    rss_p, rss_l = (lambda r: r["python_rss_mb"]), (lambda r: r["lookout"]["peak_rss_mb"])
    print(f"{name(g)} {median(g, ttft_p):.0f} | {median(g, ttft_l):.0f} | {ratio(g, lambda r: ttft_l(r) / ttft_p(r))} | "
          f"{median(g, dec_p):.1f} | {median(g, dec_l):.1f} | {ratio(g, lambda r: dec_l(r) / max(dec_p(r), 1e-9))} | "
          f"{median(g, pre_p):.1f} | {median(g, pre_l):.1f} | {ratio(g, lambda r: pre_p(r) / max(pre_l(r), 1e-9), '{:.1f}x')} | "
          f"{median(g, rss_p):.0f} | {median(g, rss_l):.0f} | {ratio(g, lambda r: rss_l(r) / rss_p(r))} |")
print("\nDecode against its memory-bandwidth bound: decoding a token reads every decoder weight once, so")
print("tokens/s can at most be the machine's read bandwidth (measured by `lookout bench` with the same threads)")
print("over the decoder's weight bytes.\n")
print("| variant | split | decoder weights MB | read bandwidth GB/s | bound tok/s | Lookout tok/s | fraction of bound |")
print("|---|---|---|---|---|---|---|")
for g in groups:
    weights = g[0]["lookout"]["decoder_weight_bytes"]
    bandwidth = median(g, lambda r: r["lookout"]["memory_read_gb_per_s"])
    print(f"{name(g)} {weights / 1e6:.0f} | {bandwidth:.1f} | {bandwidth * 1e9 / max(weights, 1):.0f} | "
          f"{median(g, lambda r: r['lookout']['decode_tokens_per_s']):.1f} | "
          f"{median(g, lambda r: r['lookout']['decode_bandwidth_fraction']):.2f} |")
print("\nSeveral questions about one frame in one job (Lookout alone; the image is encoded once, the")
print("prompt prefix it shares prefilled once, and text answers decoded together), as a multiple of one")
print("question's time in the same run; and two cameras' jobs answered together against in turn:\n")
print("| variant | split | 3 yes_no / 1 | 3 text of 32 tokens / 1 | 2 cameras' text answers, together / in turn |")
print("|---|---|---|---|---|")
for g in groups:
    print(f"{name(g)} {ratio(g, lambda r: r['lookout']['three_yes_no_ratio'])} | {ratio(g, lambda r: r['lookout']['three_text_ratio'])} | "
          f"{ratio(g, lambda r: r['lookout']['two_cameras_ratio'])} |")

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
labels = [f"{g[0]['variant']}\n{'13 tiles' if g[0]['split'] else '1 image'}" for g in groups]
series = {
    "time to first token (s)": [(g[0]["torch"]["ttft_s"], median(g, lambda r: r["python"]["ttft_s"]),
                                 median(g, lambda r: r["lookout"]["ttft_ms"] / 1000)) for g in groups],
    "decode (tokens/s)": [(g[0]["torch"]["decode_tok_per_s"], median(g, lambda r: r["python"]["decode_tok_per_s"]),
                           median(g, lambda r: r["lookout"]["decode_tokens_per_s"])) for g in groups],
}
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, (title, values) in zip(axes, series.items()):
    width = 0.27
    for k, label in enumerate(["transformers PyTorch (fp32)", "Python ONNX Runtime loop", "Lookout"]):
        ax.bar([i + (k - 1) * width for i in range(len(groups))], [v[k] for v in values], width, label=label)
    ax.set_xticks(range(len(groups)), labels)
    ax.set_title(title)
axes[0].set_yscale("log")
axes[1].legend(fontsize=8)
fig.suptitle("SmolVLM2-256M on this machine, one run of bench/compare.sh (medians of the rounds)")
fig.tight_layout()
fig.savefig(sys.argv[5], dpi=100)
PY
cat "$here/results.md"
