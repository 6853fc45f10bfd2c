"""Stage evaluate: the classifier judges the generated Pokémon, so that LoRA experiments are
compared on a number and not only by eye.

type_fidelity_base / type_fidelity_lora: the share of base and of LoRA images that the
classifier calls base.pokemon_type, each with its 95 % Wilson score interval (*_low, *_high);
lift: their difference, with Newcombe's hybrid score interval (lift_low, lift_high), so that a
difference whose interval holds 0 reads as noise. The interval treats the two sets of images as
independent; they share their initial noise, which only makes it wider than a paired one would
be. diversity_*: the mean pairwise
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
from scipy.stats import binomtest

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.determinism import deterministic_torch
from stages.common.errors import StageError
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.models.classifier import load_classifier, scores, to_tensor

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


CONFIDENCE = 0.95


def wilson_interval(hits: int, count: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion hits/count (scipy's binomtest)."""
    interval = binomtest(hits, count).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def difference_interval(
    p1: float, interval1: tuple[float, float], p2: float, interval2: tuple[float, float]
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 from the two Wilson intervals (method 10 of
    Newcombe 1998, Statistics in Medicine 17: 873-890)."""
    (low1, high1), (low2, high2) = interval1, interval2
    difference = p1 - p2
    return (
        difference - float(np.hypot(p1 - low1, high2 - p2)),
        difference + float(np.hypot(high1 - p1, p2 - low2)),
    )


def fidelity_metrics(called: dict[str, np.ndarray]) -> dict[str, float]:
    """Type fidelity of each variant with its interval, and the LoRA's lift over the base."""
    metrics: dict[str, float] = {}
    intervals = {}
    for variant, hits in called.items():
        share = float(hits.mean())
        intervals[variant] = wilson_interval(int(hits.sum()), len(hits))
        metrics[f"type_fidelity_{variant}"] = share
        metrics[f"type_fidelity_{variant}_low"], metrics[f"type_fidelity_{variant}_high"] = (
            intervals[variant]
        )
    lora, base = metrics["type_fidelity_lora"], metrics["type_fidelity_base"]
    metrics["lift"] = lora - base
    metrics["lift_low"], metrics["lift_high"] = difference_interval(
        lora, intervals["lora"], base, intervals["base"]
    )
    return {key: round(value, 4) for key, value in metrics.items()}


def main() -> None:
    deterministic_torch()
    model, config = load_classifier()
    entries = read_generated()
    rows, called, diversities = [], {}, {}
    for variant in VARIANTS:
        images = [Image.open(paths.GENERATED / entry[variant]) for entry in entries]
        probability = scores(model, to_tensor(images, config["image_size"])).numpy()
        called[variant] = probability >= config["threshold"]
        diversities[f"diversity_{variant}"] = round(diversity(images), 4)
        for entry, p, c in zip(entries, probability, called[variant], strict=True):
            rows.append(
                {
                    "variant": variant,
                    "prompt": entry["prompt"],
                    "seed": entry["seed"],
                    "image": entry[variant],
                    "probability": round(float(p), 4),
                    f"is_{config['pokemon_type'].lower()}": bool(c),
                }
            )
    metrics = {
        "pokemon_type": config["pokemon_type"],
        **fidelity_metrics(called),
        **diversities,
        "images": len(entries),
    }
    with atomic_dir(paths.EVALUATION) as out:
        pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
        atomic_write_json(out / "metrics.json", metrics)
    log.info("%s", json.dumps(metrics))


if __name__ == "__main__":
    run_stage(main)
