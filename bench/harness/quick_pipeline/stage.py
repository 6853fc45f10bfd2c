"""A quick stand-in of the pipeline for the dashboard's tests and benchmark: the same params.yaml,
the same output layout (dvclive curves, metrics, a confusion plot, generated base and LoRA images
per prompt and seed) in well under a second, with no torch. Images and figures follow the params,
so that experiments differ visibly. `train_lora.rank: 0` makes the stage fail, as a broken run;
`train_lora.max_steps: 20000` makes it last 10 s, to interrupt.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
import re
import time
from pathlib import Path

import yaml
from PIL import Image, ImageDraw


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def creature(size: int, hue: float, radius: float, seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    r, g, b = (int(255 * c) for c in colorsys.hsv_to_rgb(hue % 1.0, 0.8, 0.9))
    cx, cy = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(r, g, b))
    draw.ellipse([cx - 4, cy - 5, cx, cy - 1], fill="black")
    return image


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    lora, gen = params["train_lora"], params["generate"]
    rank, lr, steps = int(lora["rank"]), float(lora["learning_rate"]), int(lora["max_steps"])
    if rank <= 0:
        raise SystemExit(f"train_lora.rank must be positive, got {rank}")
    out = Path("outputs")
    curves = out / "train_lora" / "plots" / "metrics"
    curves.mkdir(parents=True, exist_ok=True)
    speed = min(0.5, lr * 400) * (1 + math.log2(rank) / 4)
    losses = [0.1 + 0.9 * math.exp(-speed * step / 10) for step in range(steps)]
    rows = [f"{step}\t{loss:.5f}\n" for step, loss in enumerate(losses)]
    for part in range(1, 11):  # the curve grows as the run goes, as dvclive writes it
        time.sleep(steps / 20000)  # 40 steps: 0.02 s in all; 20,000 steps: a 10 s run
        (curves / "loss.tsv").write_text("step\tloss\n" + "".join(rows[: len(rows) * part // 10]))
    fidelity = round(min(1.0, 0.2 + speed), 4)
    (out / "train_lora" / "metrics.json").write_text(
        json.dumps({"loss": losses[-1], "final_loss": losses[-1], "step": steps})
    )
    history = out / "train_classifier" / "plots" / "metrics" / "train"
    history.mkdir(parents=True, exist_ok=True)
    epochs = int(params["classifier"]["epochs"])
    accuracy = "".join(f"{e}\t{1 - 0.5 * math.exp(-e / 3):.4f}\n" for e in range(epochs))
    (history / "accuracy.tsv").write_text("step\taccuracy\n" + accuracy)
    sklearn = out / "train_classifier" / "plots" / "sklearn"
    sklearn.mkdir(parents=True, exist_ok=True)
    pairs = (
        [("Water", "Water")] * 8
        + [("Water", "other"), ("other", "other")]
        + [("other", "other")] * 20
    )
    (sklearn / "confusion_matrix.json").write_text(
        json.dumps([{"actual": a, "predicted": p} for a, p in pairs])
    )
    (out / "train_classifier" / "metrics.json").write_text(json.dumps({"f1": 0.9, "step": epochs}))
    generated = out / "generated"
    size = int(params["resize"]["size"])
    for prompt in gen["prompts"]:
        for seed in gen["seeds"]:
            for kind, hue, radius in (
                ("base", 0.08, size / 5),
                ("lora", 0.58 + lr * 50, 3 + rank),
            ):
                path = generated / kind / slug(prompt) / f"seed-{seed}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                creature(size, hue, min(radius, size / 2.5), seed).save(path)
    evaluate = out / "evaluate"
    evaluate.mkdir(parents=True, exist_ok=True)
    metrics = {"type_fidelity_base": 0.1, "type_fidelity_lora": fidelity, "lift": fidelity - 0.1}
    # evaluate's 95 % intervals, as the real stage writes them (a stand-in: +-0.05)
    for name in ("type_fidelity_base", "type_fidelity_lora"):
        metrics[f"{name}_low"] = round(max(0.0, metrics[name] - 0.05), 4)
        metrics[f"{name}_high"] = round(min(1.0, metrics[name] + 0.05), 4)
    (evaluate / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
