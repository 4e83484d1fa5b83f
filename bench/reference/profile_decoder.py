#!/usr/bin/env python
"""Where a decoding step's time goes: ONNX Runtime's profiler over one decoder graph in run_genai.py's loop (prefill
P positions of random embedding rows, then N greedy steps), summed per operator type over the decode steps.
  profile_decoder.py MODEL_DIR GRAPH P N [THREADS]
e.g. profile_decoder.py bench/.work/smolvlm2-256m bench/.work/smolvlm2-256m/onnx/lookout_decoder_int8.onnx 88 64
The profiler adds its own cost to every node: compare operators with each other, not the step with an
unprofiled run.
"""
import sys, json, os, collections, numpy as np, onnxruntime as ort
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_genai as rg
model, graph, P, N = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
config = rg.text_config(model); table = rg.embed_table(model)
ids = rg.prompt_ids(config["vocab_size"], P)
loop = rg.Loop(graph, "lookout", config, threads, P + N + 1)
if "float16" in loop.session.get_inputs()[3].type:
    loop.cache = [(p, q, ort.OrtValue.ortvalue_from_numpy(v.numpy().astype(np.float16))) for p, q, v in loop.cache]
loop.generate(table, ids, 4)  # warm
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
opts.enable_profiling = True; opts.profile_file_prefix = "decoder_profile"
loop.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"]); loop.binding = loop.session.io_binding()
tokens, logits, prefill, steps = loop.generate(table, ids, N)
path = loop.session.end_profiling()
ev = json.load(open(path))
runs = [e for e in ev if e.get("name") == "model_run"]
# decode runs are all but the first
t0 = runs[1]["ts"]
byop = collections.Counter(); count = collections.Counter(); total_nodes = 0
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
        op = e["args"].get("op_name"); byop[op] += e["dur"]; count[op] += 1
run_time = sum(r["dur"] for r in runs[1:])
node_time = sum(byop.values())
n = len(runs) - 1
print(f"prefill {prefill*1e3:.1f} ms; decode {np.mean(steps)*1e3:.2f} ms/step (python), model_run {run_time/n/1e3:.2f} ms/step, kernels {node_time/n/1e3:.2f} ms/step")
for op, d in byop.most_common():
    print(f"  {op:36s} {d/n/1e3:7.3f} ms/step  {count[op]//n:4d} nodes  {d/count[op]:7.1f} us/node")
os.remove(path)
