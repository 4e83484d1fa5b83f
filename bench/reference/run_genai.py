#!/usr/bin/env python
"""The onnxruntime-genai model builder's decoder as a reference for a fused text decoder, driven by a plain
Python ONNX Runtime loop (no onnxruntime-genai runtime), and compared with Lookout's own decoder.

  run_genai.py prepare --model DIR --out GENAI [--precisions fp32,int8,int4]
      Writes GENAI/text: a text-only LlamaForCausalLM folder (config.json from DIR/config.json's text_config,
      model.safetensors from DIR/model.safetensors' model.text_model.* -> model.* and lm_head.weight, the
      tokenizer files), then runs `python -m onnxruntime_genai.models.builder` on it for each precision into
      GENAI/<precision> (exclude_embeds=true: `inputs_embeds` in; prune_lm_head=true: one row of logits out
      at prefill, as Lookout's num_logits_to_keep=1; int8/int4: MatMulNBits, accuracy_level=4, block_size=128,
      symmetric, as Lookout's builder).
  run_genai.py bench --model DIR --graph FILE --kind genai|lookout --prompt P --max-new N --threads T --runs R
      One graph, one Python loop: prefill P positions of embeddings (the checkpoint's embedding rows of random
      token ids, seed 0), then greedy-decode N tokens (the argmax token's embedding fed back). The key/value
      cache is one buffer per layer of capacity P+N bound with IOBinding as both past and present
      (genai_config.json's past_present_share_buffer for the genai graph, Lookout's design for its own), so
      no step copies or concatenates it. Prints JSON: prefill ms, decode tok/s (medians of R runs after one
      warm-up run), the tokens.
  run_genai.py compare --model DIR --genai GENAI --prompt P --steps K
      Lookout's graphs (DIR/onnx/lookout_decoder_<p>.onnx) and genai's on the same embeddings, with
      transformers' fp32 LlamaForCausalLM as the reference: max abs diff of the logits at the prefill's last
      position and at K decode steps (every graph fed the reference's greedy tokens), and the KL divergence
      of the first token's distribution KL(torch fp32 || graph). Prints JSON.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time
import numpy as np
import onnx

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def text_folder(model, out):
    """A LlamaForCausalLM folder from a SmolVLM folder: text_config and the text model's tensors."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    os.makedirs(out, exist_ok=True)
    config = json.load(open(os.path.join(model, "config.json")))
    text = dict(config["text_config"])
    text.update(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="float32")
    text.setdefault("tie_word_embeddings", False)
    json.dump(text, open(os.path.join(out, "config.json"), "w"), indent=2)
    tensors = {}
    with safe_open(os.path.join(model, "model.safetensors"), "np") as f:
        for key in f.keys():
            if key.startswith("model.text_model."):
                tensors["model." + key[len("model.text_model."):]] = f.get_tensor(key)
            elif key == "lm_head.weight":
                tensors[key] = f.get_tensor(key)
    if "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # a tied head
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(model, name)):
            shutil.copy(os.path.join(model, name), os.path.join(out, name))
    return out


def prepare(a):
    text = text_folder(a.model, os.path.join(a.out, "text"))
    for precision in a.precisions.split(","):
        dest = os.path.join(a.out, precision)
        if os.path.exists(os.path.join(dest, "model.onnx")):
            continue
        options = ["exclude_embeds=true", "prune_lm_head=true"]
        if precision in ("int4", "int8"):
            options += ["accuracy_level=4", "block_size=128", "is_symmetric=true"]
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", text, "-o", dest, "-p", precision,
                   "-e", "cpu", "-c", os.path.join(a.out, "cache"), "--extra_options", *options]
        print(" ".join(command), file=sys.stderr)
        started = time.time()
        subprocess.check_call(command)
        print(f"built {precision} in {time.time() - started:.0f} s", file=sys.stderr)


def text_config(model):
    return json.load(open(os.path.join(model, "config.json")))["text_config"]


def embed_table(model):
    from safetensors import safe_open
    with safe_open(os.path.join(model, "model.safetensors"), "np") as f:
        return f.get_tensor("model.text_model.embed_tokens.weight").astype(np.float32)


def prompt_ids(vocab, length, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, length)


class Loop:
    """One decoder graph with a shared-buffer cache of a fixed capacity, driven through IOBinding."""

    def __init__(self, graph, kind, config, threads, capacity):
        import onnxruntime as ort
        self.ort = ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.kind = kind
        self.names = {i.name for i in self.session.get_inputs()}
        assert "inputs_embeds" in self.names, f"{graph}: no inputs_embeds input"
        assert "position_ids" not in self.names, f"{graph}: expects position_ids (rotary outside attention)"
        if kind == "genai":
            genai = json.load(open(os.path.join(os.path.dirname(graph), "genai_config.json")))
            assert genai["search"]["past_present_share_buffer"], "the genai graph does not share past and present"
        self.layers = config["num_hidden_layers"]
        kv, hd = config["num_key_value_heads"], config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        self.capacity = capacity
        self.cache = []
        for layer in range(self.layers):
            for part in ("key", "value"):
                self.cache.append((f"past_key_values.{layer}.{part}", f"present.{layer}.{part}",
                                   ort.OrtValue.ortvalue_from_numpy(np.zeros([1, kv, capacity, hd], np.float32))))
        self.binding = self.session.io_binding()

    def run(self, embeds, total):
        """Runs `embeds` [1,s,hidden] after total-s cached positions; returns the last position's logits."""
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None], np.float32))
        b.bind_cpu_input("attention_mask", np.ones([1, total], np.int64))
        if "num_logits_to_keep" in self.names:
            b.bind_cpu_input("num_logits_to_keep", np.array(1, np.int64))
        b.bind_output("logits", "cpu")  # first: get_outputs() is in binding order
        for past, present, value in self.cache:
            b.bind_ortvalue_input(past, value)
            b.bind_ortvalue_output(present, value)
        self.session.run_with_iobinding(b)
        return b.get_outputs()[0].numpy()[0, -1]

    def generate(self, table, ids, new, forced=None):
        """Prefill `ids`, then greedy-decode (or feed `forced` tokens); returns tokens, logits, times."""
        started = time.perf_counter()
        logits = [self.run(table[ids], len(ids))]
        prefill = time.perf_counter() - started
        tokens = [int(logits[-1].argmax())]
        step_times = []
        for step in range(1, new):
            token = tokens[-1] if forced is None else forced[step - 1]
            started = time.perf_counter()
            logits.append(self.run(table[[token]], len(ids) + step))
            step_times.append(time.perf_counter() - started)
            tokens.append(int(logits[-1].argmax()))
        return tokens, logits, prefill, step_times


def lookout_only(graph):
    """Why `graph` runs only inside Lookout (it uses Lookout's own attention operator, which Python's
    onnxruntime does not have), or None."""
    model = onnx.load(graph, load_external_data=False)
    if any(opset.domain == "ai.lookout" for opset in model.opset_import):
        return "uses Lookout's own operator (ai.lookout.DecoderAttention): runs only inside Lookout"
    return None


def bench(a):
    if lookout_only(a.graph):
        print(json.dumps({"skipped": lookout_only(a.graph)}))
        return
    config = text_config(a.model)
    table = embed_table(a.model)
    ids = prompt_ids(config["vocab_size"], a.prompt)
    started = time.time()
    loop = Loop(a.graph, a.kind, config, a.threads, a.prompt + a.max_new)
    load_s = time.time() - started
    runs, cpu = [], []
    for run in range(a.runs + 1):  # the first run pays the one-time set-up: not counted
        cpu0 = time.process_time()
        runs.append(loop.generate(table, ids, a.max_new))
        cpu.append(time.process_time() - cpu0)
    runs, cpu = runs[1:], cpu[1:]
    prefill_ms = statistics.median(r[2] for r in runs) * 1000
    decode = statistics.median(sum(r[3]) for r in runs)
    print(json.dumps({"graph": os.path.relpath(a.graph, a.model) if a.graph.startswith(a.model) else a.graph,
                      "kind": a.kind, "threads": a.threads, "prompt": a.prompt, "new_tokens": a.max_new,
                      "capacity": loop.capacity, "runs": a.runs, "load_s": round(load_s, 2),
                      "prefill_ms": round(prefill_ms, 1),
                      "decode_tok_per_s": round((a.max_new - 1) / max(decode, 1e-9), 2),
                      "cpu_s_per_answer": round(statistics.median(cpu), 3), "tokens": runs[0][0][:16]}))


def softmax(x):
    x = x.astype(np.float64) - x.max()
    e = np.exp(x)
    return e / e.sum()


def compare(a):
    import torch
    from transformers import LlamaForCausalLM
    config = text_config(a.model)
    table = embed_table(a.model)
    ids = prompt_ids(config["vocab_size"], a.prompt)
    torch.set_num_threads(a.threads)
    text = os.path.join(a.genai, "text")
    model = LlamaForCausalLM.from_pretrained(text, torch_dtype=torch.float32, attn_implementation="eager").eval()
    # transformers fp32, greedy: the reference tokens and logits every graph is compared on.
    with torch.no_grad():
        out = model(inputs_embeds=torch.from_numpy(table[ids])[None], use_cache=True)
        ref_logits = [out.logits[0, -1].numpy()]
        cache = out.past_key_values
        tokens = [int(ref_logits[-1].argmax())]
        for step in range(1, a.steps + 1):
            out = model(inputs_embeds=torch.from_numpy(table[[tokens[-1]]])[None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            ref_logits.append(out.logits[0, -1].numpy())
            tokens.append(int(ref_logits[-1].argmax()))
    graphs = {}
    for precision in a.precisions.split(","):
        graphs[f"lookout_{precision}"] = ("lookout", os.path.join(a.model, "onnx", f"lookout_decoder_{precision}.onnx"))
        graphs[f"genai_{precision}"] = ("genai", os.path.join(a.genai, precision, "model.onnx"))
    logits = {}
    report = {"prompt": a.prompt, "decode_steps": a.steps, "torch_tokens": tokens, "graphs": {}}
    for name, (kind, path) in graphs.items():
        if not os.path.exists(path):
            report["graphs"][name] = {"missing": path}
            continue
        if lookout_only(path):
            report["graphs"][name] = {"missing": lookout_only(path)}
            continue
        loop = Loop(path, kind, config, a.threads, a.prompt + a.steps + 1)
        graph_tokens, graph_logits, _, _ = loop.generate(table, ids, a.steps + 1, forced=tokens[:-1])
        logits[name] = graph_logits
        diffs = [float(np.abs(g - r).max()) for g, r in zip(graph_logits, ref_logits)]
        p, q = softmax(ref_logits[0]), softmax(graph_logits[0])
        report["graphs"][name] = {
            "max_abs_diff_vs_torch_prefill": diffs[0], "max_abs_diff_vs_torch_decode": max(diffs[1:]),
            "kl_first_token_vs_torch": float(np.sum(p * (np.log(p) - np.log(q)))),
            "greedy_tokens_agree_with_torch": sum(int(g.argmax()) == t for g, t in zip(graph_logits, tokens)),
            "of": len(tokens)}
        del loop
    report["logit_range_torch"] = [float(min(l.min() for l in ref_logits)), float(max(l.max() for l in ref_logits))]
    for precision in a.precisions.split(","):
        l, g = logits.get(f"lookout_{precision}"), logits.get(f"genai_{precision}")
        if l is None or g is None:
            continue
        diffs = [float(np.abs(x - y).max()) for x, y in zip(l, g)]
        p, q = softmax(g[0]), softmax(l[0])
        report[f"lookout_vs_genai_{precision}"] = {
            "max_abs_diff_prefill": diffs[0], "max_abs_diff_decode": max(diffs[1:]),
            "kl_first_token_genai_lookout": float(np.sum(p * (np.log(p) - np.log(q))))}
    print(json.dumps(report))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--precisions", default="fp32,int8,int4")
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--graph", required=True)
    b.add_argument("--kind", choices=["genai", "lookout"], default="genai")
    b.add_argument("--prompt", type=int, required=True)
    b.add_argument("--max-new", type=int, default=64)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--genai", required=True)
    c.add_argument("--prompt", type=int, required=True)
    c.add_argument("--steps", type=int, default=4)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--precisions", default="fp32,int8,int4")
    a = ap.parse_args()
    {"prepare": prepare, "bench": bench, "compare": compare}[a.command](a)


if __name__ == "__main__":
    main()
