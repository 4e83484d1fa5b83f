"""Loads a Lookout dataset folder the way a user fine-tuning on it would, with Hugging Face `datasets`
(`load_dataset("imagefolder", data_dir=...)`), and prints what it found as one JSON object: the row
count, the columns with their types, and per row its fields and the pixel size of each image."""

import json
import sys

import datasets

folder = sys.argv[1]
dataset = datasets.load_dataset("imagefolder", data_dir=folder, split="train")
rows = []
for row in dataset:
    fields = {
        name: value
        for name, value in row.items()
        if name not in ("image", "frames")
    }
    fields["image_size"] = list(row["image"].size)
    fields["frame_sizes"] = [list(frame.size) for frame in row["frames"]]
    rows.append(fields)
print(
    json.dumps(
        {
            "num_rows": dataset.num_rows,
            "features": {name: str(feature) for name, feature in dataset.features.items()},
            "rows": rows,
        }
    )
)
