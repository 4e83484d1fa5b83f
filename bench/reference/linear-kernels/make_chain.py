"""Writes the chain linear-kernels times: make_chain.py DIR (see src/main.rs)."""
import numpy as np, onnx, sys, os
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(0)
BS = 128
shapes = []
for l in range(30):
    shapes += [(960, 576), (576, 576), (3072, 576), (576, 1536)]
shapes.append((49280, 576))
nodes, inits, outs = [], [], []
raw = open(os.path.join(out, "chain.bin"), "wb")
for i, (N, K) in enumerate(shapes):
    blocks = -(-K // BS)
    q = rng.integers(0, 256, size=(N, blocks, BS), dtype=np.uint8)
    s = (rng.random((N, blocks), dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
    raw.write(q.tobytes()); raw.write(s.tobytes())
    n = f"w{i}"
    inits += [nh.from_array(q, n + "b"), nh.from_array(s.reshape(-1), n + "s")]
    nodes.append(h.make_node("MatMulNBits", [f"x{K}", n + "b", n + "s"], [n], domain="com.microsoft", K=K, N=N, bits=8, block_size=BS, accuracy_level=4))
    outs.append(h.make_tensor_value_info(n, T.FLOAT, None))
g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x576", T.FLOAT, ["m", 576]), h.make_tensor_value_info("x1536", T.FLOAT, ["m", 1536])], outs, initializer=inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)]); m.ir_version = 10
onnx.save(m, os.path.join(out, "chain.onnx"), save_as_external_data=True, location="chain.onnx.data")
print("ok", sum(N * (-(-K // BS)) * (BS + 4) for N, K in shapes) / 1e6, "MB")
# One Gemm of dynamic sizes, B transposed (`[n, k]`, the weights' layout): ONNX Runtime's SGEMM, which a
# kernel here feeds with weights it dequantized.
g = h.make_graph([h.make_node("Gemm", ["x", "b"], ["y"], transB=1)], "gemm",
                 [h.make_tensor_value_info("x", T.FLOAT, ["m", "k"]), h.make_tensor_value_info("b", T.FLOAT, ["n", "k"])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["m", "n"])])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]); m.ir_version = 10
onnx.save(m, os.path.join(out, "gemm.onnx"))
