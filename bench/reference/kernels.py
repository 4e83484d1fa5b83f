#!/usr/bin/env python
"""Cold-cache throughput of one linear-layer kernel, as ONNX Runtime's CPU provider runs it: a chain of 40 pairs of
576->1536->576 layers, every weight distinct (~70-280 MB, past any cache), at 1 row (a decoding step) and 88 rows
(a one-image prefill), 2 threads. Kernels: fp32 MatMul; MatMulNBits (accuracy_level 4) at BITS bits and blocks of
BLOCK, quantized as Lookout's builder does; DynamicQuantizeMatMul (per-column int8, the official int8 export's).
  kernels.py fp32 nbits:8:32 nbits:8:128 nbits:4:128 dqmm
Prints per kernel: weight MB, ms per run at 1 row (and the GB/s it streams), ms at 88 rows (best of several).
"""
import numpy as np, onnx, onnxruntime as ort, time, sys
from onnx import helper as h, TensorProto as T, numpy_helper as nh
L = 40; H, I = 576, 1536
rng = np.random.default_rng(0)
Ws = [(rng.standard_normal((I, H)).astype(np.float32) * 0.05, rng.standard_normal((H, I)).astype(np.float32) * 0.05) for _ in range(L)]
def nbits_init(W, name, bits, bs):
    N, K = W.shape; blocks = -(-K // bs)
    W = np.pad(W, ((0, 0), (0, blocks * bs - K)))
    Wb = W.reshape(N, blocks, bs)
    idx = np.abs(Wb).argmax(-1); wmax = np.take_along_axis(Wb, idx[..., None], -1)[..., 0]
    lo = -(1 << (bits - 1)); scale = wmax / lo; scale[scale == 0] = 1
    q = (np.clip(np.round(Wb / scale[..., None]), lo, -lo - 1).astype(np.int32) - lo).astype(np.uint8)
    if bits == 4: q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return [nh.from_array(q, name + "b"), nh.from_array(scale.astype(np.float32).reshape(-1), name + "s")]
def build(kind, bits=8, bs=32, threads=2):
    nodes, inits, x = [], [], "x"
    for l, (W1, W2) in enumerate(Ws):
        for j, W in enumerate((W1, W2)):
            n = f"l{l}_{j}"; N, K = W.shape
            if kind == "nbits":
                inits += nbits_init(W, n, bits, bs)
                nodes.append(h.make_node("MatMulNBits", [x, n + "b", n + "s"], [n], domain="com.microsoft", K=K, N=N, bits=bits, block_size=bs, accuracy_level=4))
            elif kind == "dqmm":
                sc = np.abs(W).max(1) / 127
                q = np.clip(np.round(W / sc[:, None]), -127, 127).astype(np.int8).T.copy()
                inits += [nh.from_array(q, n + "b"), nh.from_array(sc.astype(np.float32), n + "s")]
                nodes.append(h.make_node("DynamicQuantizeMatMul", [x, n + "b", n + "s", ""], [n], domain="com.microsoft"))
            else:
                inits.append(nh.from_array(W.T.copy(), n + "w")); nodes.append(h.make_node("MatMul", [x, n + "w"], [n]))
            x = n
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["m", H])], [h.make_tensor_value_info(x, T.FLOAT, None)], initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)]); m.ir_version = 10
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wbytes = sum(i.raw_data.__len__() if i.raw_data else nh.to_array(i).nbytes for i in inits)
    return s, wbytes
cases = [a.split(":") for a in sys.argv[1:]]
for c in cases:
    kind = c[0]; bits = int(c[1]) if len(c) > 1 else 8; bs = int(c[2]) if len(c) > 2 else 32
    s, wb = build(kind, bits, bs)
    res = []
    for M in (1, 88):
        x = rng.standard_normal((M, H)).astype(np.float32)
        for _ in range(3): s.run(None, {"x": x})
        best = 1e9
        for _ in range(7 if M == 1 else 3):
            t = time.perf_counter(); reps = 10 if M == 1 else 2
            for _ in range(reps): s.run(None, {"x": x})
            best = min(best, (time.perf_counter() - t) / reps)
        res.append(f"M={M} {best*1e3:.2f} ms" + (f" ({wb/best/1e9:.1f} GB/s)" if M == 1 else ""))
    print(f"{':'.join(c):14s} {wb/1e6:.0f} MB:", ", ".join(res), flush=True)
