"""Stage evaluate: the classifier judges the generated Pokémon, so that LoRA experiments are
compared on a number and not only by eye.

type_fidelity_base / type_fidelity_lora: the share of base and of LoRA images that the
classifier calls base.pokemon_type; lift: their difference. diversity_*: the mean pairwise
distance between the images of a variant (root mean square pixel difference, 0 to 1), so that a
LoRA that draws one creature over and over shows. Every image's score goes to predictions.csv.
"""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pandas as pd
from PIL import Image

from stages import paths
from stages.classifier import load_classifier, scores, to_tensor
from stages.cli import run_stage
from stages.errors import StageError
from stages.fsutil import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

VARIANTS = ("base", "lora")


def read_generated() -> list[dict]:
    index = paths.GENERATED / "index.json"
    if not index.is_file():
        raise StageError(f"{index} not found; run `dvc repro generate_text_to_image` first")
    return json.loads(index.read_text(encoding="utf-8"))


def diversity(images: list[Image.Image]) -> float:
    """Mean pairwise root-mean-square pixel distance (pixels in 0..1); 0 for fewer than two."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
    pairs = list(itertools.combinations(arrays, 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs]))


def main() -> None:
    model, config = load_classifier()
    entries = read_generated()
    rows, metrics = [], {}
    for variant in VARIANTS:
        images = [Image.open(paths.GENERATED / entry[variant]) for entry in entries]
        probability = scores(model, to_tensor(images, config["image_size"])).numpy()
        called = probability >= config["threshold"]
        metrics[f"type_fidelity_{variant}"] = float(called.mean())
        metrics[f"diversity_{variant}"] = diversity(images)
        for entry, p, c in zip(entries, probability, called, strict=True):
            rows.append(
                {"variant": variant, "prompt": entry["prompt"], "seed": entry["seed"],
                 "image": entry[variant], "probability": round(float(p), 4),
                 f"is_{config['pokemon_type'].lower()}": bool(c)}
            )  # fmt: skip
    metrics["lift"] = metrics["type_fidelity_lora"] - metrics["type_fidelity_base"]
    metrics["images"] = len(entries)
    metrics = {"pokemon_type": config["pokemon_type"], **metrics}
    with atomic_dir(paths.EVALUATION) as out:
        pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
        atomic_write_json(out / "metrics.json", metrics)
    log.info("%s", json.dumps(metrics))


if __name__ == "__main__":
    run_stage(main)
