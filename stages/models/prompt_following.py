"""How well a base model follows type prompts: for each of the 18 types, images drawn for
"a <type> type pokemon" and judged by an 18-way type classifier (the judge), trained on
synthetic creatures of its own seed stream (never the pretraining corpus or the dataset).

The pipeline's classifier answers "Water or not?" only, so it cannot say whether a fire prompt
drew a fire creature; the judge can. A score per type is the share of that type's images the
judge calls that type; chance is 1/18.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from torch import nn
from tqdm import tqdm

from stages.data.pokemon import TYPES
from stages.models.classifier import TypeClassifier, augment
from stages.models.tensors import to_unit_range
from stages.models.tiny_model import Corpus, make_corpus

log = logging.getLogger(__name__)

JUDGE_IDS = 2_000_000  # first creature id of the judge's seed stream
JUDGE_WIDTH = 32


def type_prompt(pokemon_type: str) -> str:
    return f"a {pokemon_type.lower()} type pokemon"


def train_judge(
    train: Corpus, epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3
) -> TypeClassifier:
    """An 18-way TypeClassifier trained with the pipeline classifier's augmentation (blur and
    paling), so that it judges soft generated images by hue and shape."""
    torch.manual_seed(seed)
    model = TypeClassifier(JUDGE_WIDTH, outputs=len(TYPES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(train.images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in tqdm(range(epochs), desc="train type judge", unit="epoch"):
        order = torch.randperm(len(train.images), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            images = augment(train.images[batch], generator)
            loss = nn.functional.cross_entropy(model(images), train.types[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def judge_types(judge: TypeClassifier, images: torch.Tensor) -> np.ndarray:
    """The type index the judge gives each image (N x 3 x S x S in [-1, 1])."""
    with torch.inference_mode():
        return (
            torch.cat([judge(images[i : i + 256]) for i in range(0, len(images), 256)])
            .argmax(1)
            .numpy()
        )


def make_judge(
    size: int, seed: int, count: int = 4500, epochs: int = 12
) -> tuple[TypeClassifier, float]:
    """A judge and its accuracy on creatures it never saw (a fifth of `count`)."""
    corpus = make_corpus(count, size, seed, first_id=JUDGE_IDS, desc="type judge")
    held_out = len(corpus.images) // 5
    train = Corpus(corpus.images[held_out:], corpus.types[held_out:])
    judge = train_judge(train, epochs, seed)
    predicted = judge_types(judge, corpus.images[:held_out])
    accuracy = float((predicted == corpus.types[:held_out].numpy()).mean())
    log.info("type judge: %.3f accuracy on %d held-out creatures", accuracy, held_out)
    return judge, accuracy


def prompt_following(
    pipe: StableDiffusionPipeline,
    judge: TypeClassifier,
    seeds: list[int],
    num_inference_steps: int = 25,
    guidance_scale: float = 4.0,
) -> dict:
    """Per type, the share of images drawn for its prompt that the judge calls that type."""
    per_type: dict[str, float] = {}
    for index, pokemon_type in enumerate(tqdm(TYPES, desc="prompt following", unit="type")):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            images = pipe(
                [type_prompt(pokemon_type)] * len(seeds),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators,
            ).images
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        judged = judge_types(judge, to_unit_range(i.resize((size, size)) for i in images))
        per_type[pokemon_type] = round(float((judged == index).mean()), 4)
    return {
        "per_type": per_type,
        "overall": round(float(np.mean(list(per_type.values()))), 4),
        "images_per_type": len(seeds),
        "chance": round(1 / len(TYPES), 4),
    }
