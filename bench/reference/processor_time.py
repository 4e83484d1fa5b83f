#!/usr/bin/env python
"""Median time of transformers' SmolVLM processor (image preprocessing + prompt) on one image, as JSON."""
import json, statistics, sys, time
from PIL import Image
from transformers import AutoProcessor

model, image_path, split = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
processor = AutoProcessor.from_pretrained(model)
processor.image_processor.do_image_splitting = split
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Can you describe this image?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
times = []
for _ in range(5):
    image = Image.open(image_path)
    started = time.perf_counter()
    processor(text=prompt, images=[image], return_tensors="np")
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"processor_ms": statistics.median(times)}))
