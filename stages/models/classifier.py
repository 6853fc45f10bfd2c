"""The Pokémon-type classifier of the second talk: a small CNN that tells whether an image is of
base.pokemon_type. train_classifier trains it; evaluate uses it to judge generated images."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from torch import nn

from stages.common import paths
from stages.common.errors import StageError
from stages.models.tensors import to_unit_range

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class TypeClassifier(nn.Module):
    """Three conv blocks, global average pooling, one logit: "is it the type?" (or one logit per
    type with `outputs` > 1: "which type is it?")."""

    def __init__(self, width: int = 16, outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),
            _block(width, 2 * width),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(images))
        return logits.squeeze(1) if logits.shape[1] == 1 else logits

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """Images as a float batch in [-1, 1], resized to the classifier's input size."""
    return to_unit_range(
        image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR) for image in images
    )


def scores(model: TypeClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's probability that each image is of the type."""
    model.eval()
    with torch.inference_mode():
        logits = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.sigmoid(torch.cat(logits))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random mirror, shifts of up to 1/8 of the side and a little brightness and contrast
    jitter; on half the images a loss of detail (down- then up-sampling by 2 to 4), on half a
    loss of colour (up to 60 % toward grey). Generated images are softer and paler than drawn
    ones, and the classifier must judge both by hue and shape, not by crisp saturated pixels."""
    n, _, side, _ = batch.shape
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    shift = side // 8
    dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
    scale = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1)
    offset = 0.1 * (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1)
    batch = (batch * scale + offset).clamp(-1, 1)
    factor = int(torch.randint(2, 5, (1,), generator=generator))
    small = nn.functional.interpolate(batch, scale_factor=1 / factor, mode="area")
    soft = nn.functional.interpolate(
        small, size=(side, side), mode="bilinear", align_corners=False
    )
    degrade = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(degrade[:, None, None, None], soft, batch)
    grey = batch.mean(dim=1, keepdim=True).expand_as(batch)
    amount = 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    pale = torch.rand(n, generator=generator)[:, None, None, None] < 0.5
    return torch.where(pale, batch * (1 - amount) + grey * amount, batch)


def stratified_split(
    ids: list[int], labels: list[int], test_size: float, seed: int
) -> tuple[list[int], list[int]]:
    """Train and test ids, each class split in the same proportion, deterministic by seed."""
    if min(labels.count(0), labels.count(1)) < 2:
        raise StageError(
            "the classifier needs at least 2 images of base.pokemon_type and 2 of other types; "
            f"got {labels.count(1)} and {labels.count(0)}"
        )
    train, test = train_test_split(
        ids, test_size=test_size, stratify=labels, random_state=seed, shuffle=True
    )
    return sorted(train), sorted(test)


def save_classifier(folder: Path, model: TypeClassifier, config: dict) -> None:
    save_file(model.state_dict(), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_classifier(folder: Path = paths.CLASSIFIER) -> tuple[TypeClassifier, dict]:
    if not (folder / WEIGHTS).is_file():
        raise StageError(f"{folder / WEIGHTS} not found; run `dvc repro train_classifier` first")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    model = TypeClassifier(config["width"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval(), config
