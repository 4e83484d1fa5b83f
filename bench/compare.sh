#!/usr/bin/env bash
# Lookout's own decoder graphs against the official export's, the onnxruntime-genai model builder's decoder,
# the Python ONNX Runtime reference loop and transformers' PyTorch `generate`, on the same image(s) and
# thread count, in one run (the machine is shared and noisy: compare the ratios, not the absolute figures
# across runs).
#   bench/compare.sh            -> bench/results.md and bench/results.png (BENCH_OUT=bench/results-500m: elsewhere)
# For each variant (fp32, int8, q4 <-> Lookout's int4) and case (1 image, 13 tiles = --split on the 640x480
# frame, and a 16-frame clip where `lookout bench` offers --clip-frames), in BENCH_ROUNDS rounds (default 1):
#   lookout bench --graphs official and --graphs lookout (Lookout's own decoder, `lookout models build`),
#   bench/reference/run_onnx.py (Python loop over the official graphs; image cases),
#   bench/reference/run_genai.py bench (Python loop over genai's decoder, on the case's prompt length),
#   bench/reference/run_torch.py (fp32 only, once per case; image cases).
# Then run_genai.py compare: logits of Lookout's and genai's decoders against transformers fp32.
# Builds (once) a full-size random-weight SmolVLM2-256M export (BENCH_PRESET=500m for the 500M geometry) with
# its int8 and q4 variants, its checkpoint, Lookout's and genai's decoders in $BENCH_WORK (default
# bench/.work; about 3 GB, a few minutes, Python packages from PyPI); speed does not depend on the weights.
# BENCH_DEVICE (default cpu) is where Lookout runs (`lookout bench --device`: cpu, gpu, npu, auto) and
# BENCH_RUNTIME the ONNX Runtime library it loads (default: the Python loops' own; on a GPU box the CUDA build,
# e.g. .ort/gpu/lib/libonnxruntime.so); results.md's device column says where each Lookout row ran.
# BENCH_NOTES names a Markdown file of notes on the run (what else ran on the machine...) for results.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="${BENCH_WORK:-$here/.work}"
preset="${BENCH_PRESET:-256m}"
threads="${BENCH_THREADS:-2}"
tokens="${BENCH_TOKENS:-64}"
rounds="${BENCH_ROUNDS:-1}"
variants="${BENCH_VARIANTS:-fp32 int8 q4}"
clip_frames="${BENCH_CLIP_FRAMES:-16}"
out="${BENCH_OUT:-$here/results}"
device="${BENCH_DEVICE:-cpu}"  # where Lookout runs (lookout bench --device): cpu, gpu, npu or auto
mkdir -p "$work"

if [[ ! -x "$work/venv/bin/python" ]]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q torch torchvision transformers onnx onnxruntime onnxscript tokenizers pillow num2words \
    safetensors matplotlib onnxruntime-genai
fi
"$work/venv/bin/python" -c "import matplotlib, safetensors, onnxruntime_genai" 2>/dev/null ||
  "$work/venv/bin/pip" install -q matplotlib safetensors onnxruntime-genai
py="$work/venv/bin/python"
model="$work/smolvlm2-$preset"
genai="$work/genai-$preset"
if [[ ! -f "$model/onnx/decoder_model_merged_q4.onnx" || ! -f "$model/model.safetensors" ]]; then
  "$py" "$root/models/fixtures/build_export.py" --preset "$preset" --out "$model"
  "$py" "$root/models/fixtures/quantize.py" "$model/onnx" decoder_model_merged,vision_encoder
fi
# The quantizer leaves the (gather-only) embedding in fp32: the quantized variants use it as is.
ln -sf embed_tokens.onnx "$model/onnx/embed_tokens_int8.onnx"
ln -sf embed_tokens.onnx "$model/onnx/embed_tokens_q4.onnx"
"$py" -c "
from PIL import Image; import numpy as np
y, x = np.mgrid[0:480, 0:640]
Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 251], -1).astype(np.uint8)).save('$work/frame.png')"

# CARGO_TARGET_DIR lets the bench build beside another build of the same tree without disturbing it;
# BENCH_LOOKOUT names a binary built before (no build then).
lookout="${BENCH_LOOKOUT:-}"
if [[ -z "$lookout" ]]; then
  target="${CARGO_TARGET_DIR:-$root/target}"
  (cd "$root" && CARGO_TARGET_DIR="$target" cargo build --release --quiet)
  lookout="$target/release/lookout"
fi
# Lookout loads the very ONNX Runtime library the Python loops use: the comparison is of the code around it.
ORT_DYLIB_PATH="${BENCH_RUNTIME:-$("$py" -c 'import glob, os, onnxruntime
print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0])')}"
export ORT_DYLIB_PATH
ort_version="$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)')"
genai_version="$("$py" -c 'import onnxruntime_genai; print(onnxruntime_genai.__version__)')"

# Built on every run (seconds), so the graphs are those of the binary being measured.
for precision in fp32 int8 int4; do
  LOOKOUT_LOG=warn "$lookout" models build "$model" --precision "$precision"
done
"$py" "$here/reference/run_genai.py" prepare --model "$model" --out "$genai" > "$work/genai_prepare.log" 2>&1

help="$("$lookout" bench --help)"
graphs_flag=0; grep -q -- "--graphs" <<<"$help" && graphs_flag=1
device_flag=(); grep -q -- "--device" <<<"$help" && device_flag=(--device "$device")
cases="image tiles"; grep -q -- "--clip-frames" <<<"$help" && cases="image tiles clip"
cases="${BENCH_CASES:-$cases}"  # e.g. BENCH_CASES=tiles to run the 13-tile rows only
# Without `--graphs`, a config file chooses the decoder (vision.graphs).
for g in official lookout; do printf '[vision]\ngraphs = "%s"\n' "$g" > "$work/graphs_$g.toml"; done

results="$work/results.jsonl"
: > "$results"
record() {  # record VARIANT CASE ROUND RUNNER JSON [RSS_MB]
  "$py" -c "import json, sys
print(json.dumps({'variant': sys.argv[1], 'case': sys.argv[2], 'round': int(sys.argv[3]), 'runner': sys.argv[4],
                  'result': json.loads(sys.argv[5]), 'rss_mb': float(sys.argv[6]) if sys.argv[6] else None}))" \
    "$@" "${6:-}" >> "$results"
}
rss_of() { grep peak_rss_mb "$1" | tail -1 | cut -d' ' -f2; }

declare -A prompt_len
for round in $(seq "$rounds"); do
  for case in $cases; do
    flag=""; split=0; runs=3
    case "$case" in
      tiles) flag="--split"; split=1; runs=1 ;;
      clip) flag="--clip-frames $clip_frames"; runs=1 ;;
    esac
    for variant in $variants; do
      suffix=""; [[ "$variant" == fp32 ]] || suffix="_$variant"
      precision="$variant"; [[ "$variant" == q4 ]] && precision=int4
      echo "== $(date -u +%H:%M:%S) $variant $case round $round/$rounds" >&2
      for g in official lookout; do
        if [[ "$graphs_flag" == 1 ]]; then gflag=(--graphs "$g"); else gflag=(--config "$work/graphs_$g.toml"); fi
        # shellcheck disable=SC2086
        json="$(LOOKOUT_LOG=warn "$lookout" bench --model "$model" --variant "$variant" --image "$work/frame.png" $flag \
          "${gflag[@]}" "${device_flag[@]}" --threads "$threads" --runs "$runs" --max-new-tokens "$tokens" --json)"
        record "$variant" "$case" "$round" "lookout_$g" "$json"
        p="$("$py" -c 'import json, sys; print(json.loads(sys.argv[1]).get("prompt_tokens", ""))' "$json")"
        [[ -n "$p" ]] && prompt_len[$case]="$p"
      done
      if [[ "$case" != clip ]]; then
        json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_onnx.py" --model "$model" --suffix "$suffix" \
          --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" --runs "$runs" 2>"$work/python.err")"
        record "$variant" "$case" "$round" python_official "$json" "$(rss_of "$work/python.err")"
        # The prompt's length in tokens, where `lookout bench` does not report it.
        [[ -n "${prompt_len[$case]:-}" ]] ||
          prompt_len[$case]="$("$py" -c 'import json, sys; print(json.loads(sys.argv[1])["input_ids_len"])' "$json")"
        json="$("$py" "$here/reference/processor_time.py" "$model" "$work/frame.png" "$split" 2>/dev/null)"
        record "$variant" "$case" "$round" processor "$json"
      fi
      if [[ -n "${prompt_len[$case]:-}" ]]; then
        json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_genai.py" bench --model "$model" \
          --graph "$genai/$precision/model.onnx" --kind genai --prompt "${prompt_len[$case]}" --max-new "$tokens" \
          --threads "$threads" --runs "$runs" 2>"$work/genai.err")"
        record "$variant" "$case" "$round" genai "$json" "$(rss_of "$work/genai.err")"
        # Lookout's own graph in the same Python loop: the graph apart from the Rust code around it.
        json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_genai.py" bench --model "$model" \
          --graph "$model/onnx/lookout_decoder_$precision.onnx" --kind lookout --prompt "${prompt_len[$case]}" \
          --max-new "$tokens" --threads "$threads" --runs "$runs" 2>"$work/genai.err")"
        record "$variant" "$case" "$round" python_lookout_graph "$json" "$(rss_of "$work/genai.err")"
      fi
      # PyTorch runs fp32 only, once per case: it is the unquantized reference for every variant.
      if [[ "$variant" == fp32 && "$round" == 1 && "$case" != clip ]]; then
        json="$("$py" "$here/reference/peak_rss.py" "$here/reference/run_torch.py" --model "$model" \
          --split "$split" --image "$work/frame.png" --max-new "$tokens" --threads "$threads" 2>"$work/torch.err")"
        record "$variant" "$case" "$round" torch "$json" "$(rss_of "$work/torch.err")"
      fi
    done
  done
done

# Outputs: Lookout's decoders and genai's on the same embeddings, against transformers fp32.
for case in image tiles; do
  [[ -n "${prompt_len[$case]:-}" ]] || continue
  json="$("$py" "$here/reference/run_genai.py" compare --model "$model" --genai "$genai" --prompt "${prompt_len[$case]}" \
    --steps 4 --threads "$threads" 2>"$work/compare.err")"
  record all "$case" 1 compare "$json"
done

"$py" "$here/reference/report.py" --results "$results" --model "$model" --genai "$genai" --threads "$threads" \
  --tokens "$tokens" --rounds "$rounds" --ort "$ort_version" --genai-version "$genai_version" --preset "$preset" \
  --graphs-flag "$graphs_flag" --notes "${BENCH_NOTES:-}" --png "$out.png" > "$out.md"
cat "$out.md"
