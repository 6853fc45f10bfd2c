"""The embedded base model: a tiny Stable Diffusion built from configs in stages/models/tiny_sd and
pretrained on synthetic creatures, so that the whole pipeline runs offline on a laptop CPU.

It has Stable Diffusion's parts and layout (a CLIP text encoder and tokenizer, a KL autoencoder,
a UNet conditioned by cross-attention, a DDPM noise schedule) at a size that trains in minutes:
64 px images, 16x16x4 latents, cross-attention only at the lowest resolution.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tokenizers import pre_tokenizers
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from stages.data.images import to_square
from stages.data.pokemon import TYPES
from stages.data.synthetic import creature_rng, draw_creature
from stages.models.tensors import to_unit_range

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).with_name("tiny_sd")
TINY_SIZE = 64  # pixels: the tiny model's native resolution
MAX_TOKENS = 16  # captions are short: "a water type pokemon"

# Words the tokenizer knows whole; anything else (like the instance token "pkmnlora") is spelled
# out byte by byte, so the base model has never seen it as a unit.
VOCABULARY = ["a", "an", "pokemon", "creature", "type", "and", *(t.lower() for t in TYPES)]

# Made-up words put in place of the type in some pretraining captions, so that the base model
# learns to draw a creature of any type for a word it does not know ("a pkmnlora pokemon").
_NONSENSE_LETTERS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def build_tokenizer(words: list[str] = VOCABULARY) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and one merge chain per known word."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _config(name: str) -> dict:
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def build_components(seed: int) -> dict:
    """Freshly initialised parts of the tiny pipeline (deterministic by `seed`)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(**_config("text_encoder"), vocab_size=len(tokenizer))
    return {
        "tokenizer": tokenizer,
        "text_encoder": CLIPTextModel(text_config),
        "vae": AutoencoderKL(**_config("vae")),
        "unet": UNet2DConditionModel(**_config("unet")),
        "scheduler": DDPMScheduler(**_config("scheduler")),
    }


def assemble(components: dict) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


@dataclass
class Corpus:
    """Synthetic creatures of every type, as tensors in [-1, 1], with their type index."""

    images: torch.Tensor  # N x 3 x S x S
    types: torch.Tensor  # N


PRETRAINING_IDS = 1_000_000  # first creature id of the pretraining corpus's seed stream


def make_corpus(
    count: int, size: int, seed: int, first_id: int = PRETRAINING_IDS, desc: str = "pretraining"
) -> Corpus:
    """`count` creatures, the types in turn, drawn from their own seed stream (ids from
    `first_id`, never the dataset's), on white like the processed training images."""
    images, types = [], []
    for i in tqdm(range(count), desc=f"draw {desc} corpus", unit="img"):
        type_index = i % len(TYPES)
        rng = creature_rng(seed, first_id + i)
        images.append(to_square(draw_creature(TYPES[type_index], rng, size), size, "#FFFFFF"))
        types.append(type_index)
    return Corpus(to_unit_range(images), torch.tensor(types))


def caption_for(type_index: int, rng: np.random.Generator) -> str:
    """A pretraining caption: mostly naming the type, sometimes a made-up word or none."""
    name = TYPES[type_index].lower()
    roll = rng.random()
    if roll < 0.55:
        return f"a {name} type pokemon"
    if roll < 0.75:
        return f"a {name} pokemon"
    if roll < 0.85:
        return "a pokemon"
    length = int(rng.integers(4, 9))
    word = "".join(
        rng.choice(list(_VOWELS if k % 2 else _NONSENSE_LETTERS)) for k in range(length)
    )
    return f"a {word} pokemon"


def _loop(steps: int, desc: str, step_fn: Callable[[int], float]) -> float:
    """Run step_fn(step) for every step (never fewer: the step count alone decides the model,
    not the wall clock); returns the last loss."""
    bar = tqdm(range(steps), desc=desc, unit="step")
    loss = math.nan
    for step in bar:
        loss = step_fn(step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
    return loss


def pretrain_vae(
    vae: AutoencoderKL, corpus: Corpus, steps: int, batch_size: int, lr: float, seed: int
) -> dict:
    """Train the autoencoder to reconstruct creatures (L1 + a small KL term)."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 1])

    def step(_: int) -> float:
        batch = corpus.images[rng.integers(0, len(corpus.images), batch_size)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    loss = _loop(steps, "pretrain vae", step)
    vae.eval()
    return {"vae_steps": steps, "vae_loss": loss}


@torch.inference_mode()
def encode_corpus(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of the corpus: the UNet trains on these, never re-encoding an image."""
    chunks = [
        vae.encode(images[i : i + batch_size]).latent_dist.mean
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def pretrain_unet(
    components: dict,
    corpus: Corpus,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.0,
) -> dict:
    """Train UNet and text encoder together on cached latents, with caption dropout so that
    classifier-free guidance works at sampling time. With `ema_decay` > 0 the weights kept are
    an exponential moving average of the trained ones (diffusers' EMAModel), which samples
    cleaner than the last step's weights."""
    vae, unet, text_encoder = components["vae"], components["unet"], components["text_encoder"]
    tokenizer, scheduler = components["tokenizer"], components["scheduler"]
    latents = encode_corpus(vae, corpus.images)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    rng = np.random.default_rng([seed, 2])
    generator = torch.Generator().manual_seed(seed)
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True) if ema_decay > 0 else None

    def step(_: int) -> float:
        index = rng.integers(0, len(latents), batch_size)
        captions = [
            "" if rng.random() < caption_dropout else caption_for(int(t), rng)
            for t in corpus.types[index]
        ]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        hidden = text_encoder(ids)[0]
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(
            0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator
        )
        prediction = unet(scheduler.add_noise(clean, noise, t), t, hidden).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(params)
        return loss.item()

    loss = _loop(steps, "pretrain unet", step)
    if ema is not None:
        ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return {"unet_steps": steps, "unet_loss": loss, "scaling_factor": scaling}


def pretrain(settings, seed: int, size: int = TINY_SIZE) -> tuple[StableDiffusionPipeline, dict]:
    """The tiny base model from scratch with the recipe `settings` (a TinyModelParams):
    deterministic by its step counts and seed."""
    components = build_components(seed)
    corpus = make_corpus(settings.corpus_size, size, seed)
    stats = pretrain_vae(
        components["vae"],
        corpus,
        settings.vae_steps,
        settings.vae_batch_size,
        settings.learning_rate,
        seed,
    )
    stats |= pretrain_unet(
        components,
        corpus,
        settings.unet_steps,
        settings.unet_batch_size,
        settings.learning_rate,
        seed,
        ema_decay=settings.ema_decay,
    )
    return assemble(components), stats
