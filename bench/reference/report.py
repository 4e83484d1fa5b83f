#!/usr/bin/env python
"""bench/results.md (on stdout) and bench/results.png from the records bench/compare.sh wrote (JSON lines:
variant, case, round, runner, result, rss_mb)."""
import argparse, datetime, json, os, statistics

CASES = {"image": "1 image", "tiles": "13 tiles", "clip": "16-frame clip"}
MB = 1e6


def answer_rss(record):
    """Lookout's peak RSS answering one question at a time (older records: the whole bench run's)."""
    result = record["result"]
    return result.get("answer_peak_rss_mb", result["peak_rss_mb"])


def main():
    ap = argparse.ArgumentParser()
    for name in ("results", "model", "genai", "threads", "tokens", "rounds", "ort", "genai-version", "preset",
                 "graphs-flag", "png"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--notes", default="", help="a Markdown file of notes on this run, printed after the introduction")
    a = ap.parse_args()
    records = [json.loads(line) for line in open(a.results)]
    groups = []  # (variant, case) in the order run
    for r in records:
        if r["runner"] != "compare" and (r["variant"], r["case"]) not in groups:
            groups.append((r["variant"], r["case"]))
    groups.sort(key=lambda g: (list(CASES).index(g[1]), g[0]))

    def runs(variant, case, runner):
        return [r for r in records if (r["variant"], r["case"], r["runner"]) == (variant, case, runner)]

    def med(variant, case, runner, pick):
        values = []
        for r in runs(variant, case, runner):
            try:
                v = pick(r)
            except (KeyError, TypeError):
                continue
            if v is not None:
                values.append(v)
        return statistics.median(values) if values else None

    def fmt(value, form="{:.1f}"):
        return "n/a" if value is None else form.format(value)

    def ratio(x, y):
        return None if x is None or y is None or y == 0 else x / y

    tokens = int(a.tokens)
    text = json.load(open(os.path.join(a.model, "config.json")))["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv_per_position = text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * 4  # fp32 K and V
    bandwidth = statistics.median(r["result"]["memory_read_gb_per_s"] for r in records
                                  if r["runner"].startswith("lookout_") and "memory_read_gb_per_s" in r["result"])

    def size(*paths):
        total = 0
        for path in paths:
            for p in (path, path + ".data", path + "_data"):
                if os.path.exists(p):
                    total += os.path.getsize(os.path.realpath(p))
        return total

    def onnx(name):
        return os.path.join(a.model, "onnx", name)

    def suffix(variant):
        return "" if variant == "fp32" else f"_{variant}"

    def precision(variant):
        return "int4" if variant == "q4" else variant

    def prompt(variant, case):
        for runner, key in (("lookout_lookout", "prompt_tokens"), ("lookout_official", "prompt_tokens"),
                            ("python_official", "input_ids_len"), ("genai", "prompt")):
            value = med(variant, case, runner, lambda r: r["result"][key])
            if value is not None:
                return int(value)
        return None

    def weight_bytes(variant, runner):
        if runner in ("genai",):
            return size(os.path.join(a.genai, precision(variant), "model.onnx"))
        if runner == "python_lookout_graph" or runner == "lookout_lookout":
            return size(onnx(f"lookout_decoder_{precision(variant)}.onnx"))
        return size(onnx(f"decoder_model_merged{suffix(variant)}.onnx"))

    def bytes_per_token(variant, case, runner):
        """Weights + the KV rows a decode step reads, at the answer's average length."""
        p = prompt(variant, case)
        if p is None:
            return None
        return weight_bytes(variant, runner) + kv_per_position * (p + tokens / 2)

    decode = {
        "lookout_lookout": lambda r: r["result"]["decode_tokens_per_s"],
        "lookout_official": lambda r: r["result"]["decode_tokens_per_s"],
        "genai": lambda r: r["result"]["decode_tok_per_s"],
        "python_lookout_graph": lambda r: r["result"]["decode_tok_per_s"],
        "python_official": lambda r: r["result"]["decode_tok_per_s"],
        "torch": lambda r: r["result"]["decode_tok_per_s"],
    }

    def tok_s(variant, case, runner):
        # PyTorch runs fp32 only: the unquantized reference for every variant.
        v = "fp32" if runner == "torch" else variant
        return med(v, case, runner, decode[runner])

    # The run's date: when its last record was written.
    now = datetime.datetime.fromtimestamp(os.path.getmtime(a.results), datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    print("# Lookout's decoder vs the official graphs, onnxruntime-genai's decoder and transformers PyTorch\n")
    print(f"One run of `bench/compare.sh`, finished {now}: SmolVLM2-{a.preset.upper()} geometry with random weights "
          f"(`models/fixtures/build_export.py --preset {a.preset}`), 640x480 frame, {a.threads} intra-op threads "
          f"everywhere, {tokens} new tokens (greedy), ONNX Runtime {a.ort} (the wheel's library, loaded by "
          f"Lookout too), onnxruntime-genai {a.genai_version} (its model builder only; its runtime is not used), "
          f"BENCH_ROUNDS={a.rounds} (each figure is the median of the rounds; a single round has no spread, and "
          "the machine, 2 cores shared with other work, drifts by 10-20% from minute to minute).\n")
    print("Runners, all on the same thread count:")
    print("- **Lookout, own graphs**: `lookout bench --graphs lookout` with `lookout_decoder_<precision>.onnx` from "
          "`lookout models build DIR --precision fp32|int8|int4` (q4 rows use Lookout's int4).")
    print("- **Lookout, official graphs**: `lookout bench --graphs official` (`decoder_model_merged*.onnx`)."
          + ("" if a.graphs_flag == "1" else " This build of `lookout bench` has no `--graphs`: a config file "
             "with `[vision] graphs = \"official\"|\"lookout\"` chose the decoder."))
    print("- **genai graph, Python loop**: `bench/reference/run_genai.py bench`: the onnxruntime-genai model "
          "builder's decoder (`-e cpu`, `exclude_embeds=true prune_lm_head=true`, and for int8/int4 "
          "`accuracy_level=4 block_size=128 is_symmetric=true`) of the same checkpoint's text model, prefilled "
          "with the case's prompt length of embedding rows (random token ids) and greedy-decoded in a plain "
          "ONNX Runtime loop, the KV buffer (capacity prompt+new) bound as past and present with IOBinding. "
          "Text only: no vision encoder, so its TTFT column is its prefill.")
    print("- **Lookout graph, Python loop**: the same Python loop over Lookout's own decoder graph (the graph "
          "apart from Lookout's Rust code).")
    print("- **official, Python loop**: `bench/reference/run_onnx.py` over the official graphs (concatenating "
          "KV cache, as the model card's sample).")
    print("- **PyTorch**: `bench/reference/run_torch.py`, transformers `generate`, fp32 (the reference for every "
          "variant), image cases only.\n")

    if a.notes:
        print(open(a.notes).read().strip() + "\n")
    print("## Decode speed (tokens/s)\n")
    print("Device: where Lookout ran (`runs_on` of `lookout bench`, own graphs / official graphs; the Python "
          "loops and PyTorch run on the CPU).\n")
    print("| variant | case | device | prompt tokens | Lookout, own graphs | Lookout, official graphs | own / official | "
          "genai graph, Python loop | own / genai | Lookout graph, Python loop | official, Python loop | "
          "PyTorch fp32 | own / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def device(v, c):
        seen = [sorted({r["result"].get("runs_on", "cpu") for r in runs(v, c, runner)})
                for runner in ("lookout_lookout", "lookout_official")]
        return " / ".join(",".join(s) or "-" for s in seen)

    for v, c in groups:
        own, off, gen = tok_s(v, c, "lookout_lookout"), tok_s(v, c, "lookout_official"), tok_s(v, c, "genai")
        torch = tok_s(v, c, "torch")
        print(f"| {v} | {CASES[c]} | {device(v, c)} | {fmt(prompt(v, c), '{}')} | {fmt(own)} | {fmt(off)} | "
              f"{fmt(ratio(own, off), '{:.2f}')} | {fmt(gen)} | {fmt(ratio(own, gen), '{:.2f}')} | "
              f"{fmt(tok_s(v, c, 'python_lookout_graph'))} | {fmt(tok_s(v, c, 'python_official'))} | "
              f"{fmt(torch)} | {fmt(ratio(own, torch), '{:.2f}')} |")

    print("\n## Time to first token and prefill (ms)\n")
    print("TTFT = vision encoder + prefill (Lookout, official Python loop, PyTorch). The genai and "
          "Lookout-graph Python loops have no vision encoder: their figure is the decoder's prefill of the "
          "same number of positions.\n")
    print("| variant | case | TTFT Lookout, own | TTFT Lookout, official | TTFT official, Python loop | "
          "TTFT PyTorch fp32 | prefill Lookout, own | prefill Lookout, official | prefill genai, Python loop | "
          "prefill Lookout graph, Python loop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v, c in groups:
        print(f"| {v} | {CASES[c]} | {fmt(med(v, c, 'lookout_lookout', lambda r: r['result']['ttft_ms']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'lookout_official', lambda r: r['result']['ttft_ms']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'python_official', lambda r: r['result']['ttft_s'] * 1000), '{:.0f}')} | "
              f"{fmt(med('fp32', c, 'torch', lambda r: r['result']['ttft_s'] * 1000), '{:.0f}')} | "
              f"{fmt(med(v, c, 'lookout_lookout', lambda r: r['result']['prefill_ms']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'lookout_official', lambda r: r['result']['prefill_ms']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'genai', lambda r: r['result']['prefill_ms']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'python_lookout_graph', lambda r: r['result']['prefill_ms']), '{:.0f}')} |")

    print("\n## Decode as a fraction of its memory-bandwidth bound\n")
    print(f"A decode step reads every decoder weight once and the cached key/value rows of the answer so far: "
          f"bytes per token = decoder weight bytes (graph + external data files) + {kv_per_position} bytes of "
          f"fp32 KV per position x (prompt + {tokens}/2). Bound = read bandwidth / bytes per token, with the "
          f"read bandwidth `lookout bench` measures on {a.threads} threads (median of this run's "
          f"measurements: {bandwidth:.1f} GB/s). Where Lookout reports its own `decode_bytes_per_token` and "
          "`decode_bandwidth_fraction`, they are shown beside.\n")
    print("| variant | case | weights MB own / official / genai | bytes per token MB own / official / genai | "
          "bound tok/s own | fraction own | fraction official (Lookout) | fraction genai (Python) | "
          "Lookout's decode_bytes_per_token MB | Lookout's decode_bandwidth_fraction |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v, c in groups:
        b = {runner: bytes_per_token(v, c, runner) for runner in ("lookout_lookout", "lookout_official", "genai")}
        frac = {runner: (None if b[runner] is None or tok_s(v, c, runner) is None
                         else tok_s(v, c, runner) * b[runner] / (bandwidth * 1e9)) for runner in b}
        weights = " / ".join(f"{weight_bytes(v, runner) / MB:.0f}" for runner in b)
        per_token = " / ".join(fmt(None if b[r] is None else b[r] / MB, "{:.0f}") for r in b)
        bound = None if b["lookout_lookout"] is None else bandwidth * 1e9 / b["lookout_lookout"]
        reported = med(v, c, "lookout_lookout", lambda r: r["result"]["decode_bytes_per_token"] / MB)
        reported_fraction = med(v, c, "lookout_lookout", lambda r: r["result"]["decode_bandwidth_fraction"])
        print(f"| {v} | {CASES[c]} | {weights} | {per_token} | {fmt(bound, '{:.0f}')} | "
              f"{fmt(frac['lookout_lookout'], '{:.2f}')} | {fmt(frac['lookout_official'], '{:.2f}')} | "
              f"{fmt(frac['genai'], '{:.2f}')} | {fmt(reported, '{:.0f}')} | {fmt(reported_fraction, '{:.2f}')} |")

    print("\n## Peak memory (RSS, MB) against the model files + 300 MB\n")
    print("Model files: vision encoder, embedding and decoder of the variant as they lie in the folder "
          "(external data included). Lookout's figure is its peak while answering one question at a time "
          "(`answer_peak_rss_mb`; the whole bench run's, several-questions runs included, for records "
          "that predate it), as the Python loops answer. The genai loop is text only: its budget is its "
          "decoder files, the embedding table it reads from the checkpoint, + 300 MB.\n")
    print("| variant | case | files own MB | budget own | Lookout, own | within? | files official MB | budget official | "
          "Lookout, official | within? | official, Python loop | genai loop (budget) | PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    embed_table = text["vocab_size"] * text["hidden_size"] * 4
    for v, c in groups:
        vision = size(onnx(f"vision_encoder{suffix(v)}.onnx")) + size(onnx(f"embed_tokens{suffix(v)}.onnx"))
        own_files = vision + weight_bytes(v, "lookout_lookout")
        off_files = vision + weight_bytes(v, "lookout_official")
        own = med(v, c, "lookout_lookout", answer_rss)
        off = med(v, c, "lookout_official", answer_rss)
        within = lambda rss, files: "n/a" if rss is None else ("yes" if rss <= files / MB + 300 else "**no**")
        gen = med(v, c, "genai", lambda r: r["rss_mb"])
        gen_budget = (weight_bytes(v, "genai") + embed_table) / MB + 300
        print(f"| {v} | {CASES[c]} | {own_files / MB:.0f} | {own_files / MB + 300:.0f} | {fmt(own, '{:.0f}')} | "
              f"{within(own, own_files)} | {off_files / MB:.0f} | {off_files / MB + 300:.0f} | {fmt(off, '{:.0f}')} | "
              f"{within(off, off_files)} | {fmt(med(v, c, 'python_official', lambda r: r['rss_mb']), '{:.0f}')} | "
              f"{fmt(gen, '{:.0f}')} ({gen_budget:.0f}) | {fmt(med('fp32', c, 'torch', lambda r: r['rss_mb']), '{:.0f}')} |")

    compares = [r for r in records if r["runner"] == "compare"]
    if compares:
        print("\n## Outputs: Lookout's decoder and genai's on the same embeddings\n")
        print("`run_genai.py compare`: the prompt's embedding rows (random token ids, seed 0) through transformers' "
              "fp32 LlamaForCausalLM (eager attention) of the same checkpoint, then 4 greedy decode steps; every "
              "ONNX graph is fed the same positions and the reference's tokens. Max abs diff of the logits at the "
              "prefill's last position and over the decode steps; KL(torch fp32 || graph) of the first token's "
              "distribution; how many of the 5 greedy tokens match the reference's.\n")
        for r in compares:
            res = r["result"]
            lo, hi = res["logit_range_torch"]
            print(f"Prompt of {res['prompt']} positions ({CASES[r['case']]}); reference logits span "
                  f"{lo:.2f} to {hi:.2f}.\n")
            print("| graph | max abs diff vs torch, prefill | max abs diff vs torch, decode | KL first token vs torch | "
                  "greedy tokens agreeing |")
            print("|---|---|---|---|---|")
            for name, g in res["graphs"].items():
                if "missing" in g:
                    print(f"| {name} | missing: {g['missing']} | | | |")
                    continue
                print(f"| {name} | {g['max_abs_diff_vs_torch_prefill']:.2e} | {g['max_abs_diff_vs_torch_decode']:.2e} | "
                      f"{g['kl_first_token_vs_torch']:.2e} | {g['greedy_tokens_agree_with_torch']}/{g['of']} |")
            print("\n| Lookout vs genai | max abs diff, prefill | max abs diff, decode | KL(genai || Lookout) first token |")
            print("|---|---|---|---|")
            for key, value in res.items():
                if key.startswith("lookout_vs_genai_"):
                    print(f"| {key[len('lookout_vs_genai_'):]} | {value['max_abs_diff_prefill']:.2e} | "
                          f"{value['max_abs_diff_decode']:.2e} | {value['kl_first_token_genai_lookout']:.2e} |")
            print()

    print("\n## Lookout against the Python loop on the same (official) graphs\n")
    print("| variant | case | TTFT Python ms | TTFT Lookout ms | ratio | decode Python tok/s | decode Lookout tok/s | "
          "ratio | preprocess transformers ms | preprocess Lookout ms (alone) | CPU Python ms | CPU Lookout ms | "
          "RSS Python MB | RSS Lookout MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, c in groups:
        if c == "clip":
            continue
        tp = med(v, c, "python_official", lambda r: r["result"]["ttft_s"] * 1000)
        tl = med(v, c, "lookout_official", lambda r: r["result"]["ttft_ms"])
        dp, dl = tok_s(v, c, "python_official"), tok_s(v, c, "lookout_official")
        print(f"| {v} | {CASES[c]} | {fmt(tp, '{:.0f}')} | {fmt(tl, '{:.0f}')} | {fmt(ratio(tl, tp), '{:.2f}')} | "
              f"{fmt(dp)} | {fmt(dl)} | {fmt(ratio(dl, dp), '{:.2f}')} | "
              f"{fmt(med(v, c, 'processor', lambda r: r['result']['processor_ms']))} | "
              f"{fmt(med(v, c, 'lookout_official', lambda r: r['result']['preprocess_alone_ms']))} | "
              f"{fmt(med(v, c, 'python_official', lambda r: r['result']['cpu_s'] * 1000), '{:.0f}')} | "
              f"{fmt(med(v, c, 'lookout_official', lambda r: r['result']['cpu_ms_per_answer']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'python_official', lambda r: r['rss_mb']), '{:.0f}')} | "
              f"{fmt(med(v, c, 'lookout_official', answer_rss), '{:.0f}')} |")

    print("\n## Several questions about one frame (Lookout, own graphs)\n")
    print("As a multiple of one question's time in the same run: 3 yes/no questions, 3 text answers of 32 tokens, "
          "and two cameras' text answers together against in turn.\n")
    print("| variant | case | 3 yes_no / 1 | 3 text / 1 | 2 cameras together / in turn |")
    print("|---|---|---|---|---|")
    for v, c in groups:
        pick = lambda key: fmt(med(v, c, "lookout_lookout", lambda r: r["result"][key]), "{:.2f}")
        print(f"| {v} | {CASES[c]} | {pick('three_yes_no_ratio')} | {pick('three_text_ratio')} | "
              f"{pick('two_cameras_ratio')} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runners = [("lookout_lookout", "Lookout, own graphs"), ("lookout_official", "Lookout, official graphs"),
               ("genai", "genai graph, Python loop"), ("python_official", "official, Python loop"),
               ("torch", "PyTorch fp32")]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.16
    for k, (runner, label) in enumerate(runners):
        ax.bar([i + (k - 2) * width for i in range(len(groups))],
               [tok_s(v, c, runner) or 0 for v, c in groups], width, label=label)
    ax.set_xticks(range(len(groups)), [f"{v}\n{CASES[c]}" for v, c in groups])
    ax.set_ylabel("decode tokens/s")
    ax.legend(fontsize=8)
    ax.set_title(f"SmolVLM2-{a.preset.upper()} decode, {a.threads} threads, one run of bench/compare.sh ({now})")
    fig.tight_layout()
    fig.savefig(a.png, dpi=100)


if __name__ == "__main__":
    main()
