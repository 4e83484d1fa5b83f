#!/usr/bin/env python
"""transformers' PyTorch `generate` on the same geometry, image, prompt and thread count as the ONNX loops:
time to first token (a 1-token generate), decode speed (the extra tokens of a longer generate over their
extra time), the whole answer and its CPU time. The weights are random, built from the folder's
config.json (speed does not depend on their values); `min_new_tokens` keeps every answer the same length."""
import argparse, json, time
import torch
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--question", default="Can you describe this image?")
    a = ap.parse_args()
    from transformers import AutoConfig, AutoProcessor, SmolVLMForConditionalGeneration
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(a.model)
    proc = AutoProcessor.from_pretrained(a.model)
    proc.image_processor.do_image_splitting = bool(a.split)
    t = time.time()
    model = SmolVLMForConditionalGeneration(cfg).eval()
    load_s = time.time() - t
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": a.question}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    inputs = proc(text=prompt, images=[Image.open(a.image).convert("RGB")], return_tensors="pt")

    def generate(tokens):
        started, cpu = time.time(), time.process_time()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.time() - started, time.process_time() - cpu, out.shape[1] - inputs["input_ids"].shape[1]

    generate(1)  # the first call pays one-time set-up; time the next ones
    ttft, _, _ = generate(1)
    total, cpu, new = generate(a.max_new)
    print(json.dumps({"load_s": round(load_s, 2), "ttft_s": round(ttft, 3),
                      "decode_tok_per_s": round((new - 1) / max(total - ttft, 1e-9), 2),
                      "answer_s": round(total, 3), "cpu_s": round(cpu, 3), "new_tokens": int(new)}))


if __name__ == "__main__":
    main()
