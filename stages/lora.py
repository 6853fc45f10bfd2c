"""The pieces of LoRA training that are not the loop: the dataset, its cached latents and
text embeddings, the resumable checkpoint, the diffusers-format save."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from PIL import Image

from stages import paths
from stages.diffusion import tokenize
from stages.errors import StageError
from stages.fsutil import atomic_write_bytes
from stages.tensors import to_unit_range

log = logging.getLogger(__name__)


@dataclass
class Example:
    path: Path
    caption: str


def read_dataset(folder: Path) -> list[Example]:
    """The (image, caption) pairs of a diffusers imagefolder with metadata.jsonl."""
    metadata = folder / paths.METADATA
    if not metadata.is_file():
        raise StageError(f"{metadata} not found; run `dvc repro resize_pokemon_images` first")
    examples = []
    for line in metadata.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            examples.append(Example(folder / row["file_name"], row["text"]))
    if not examples:
        raise StageError(f"{metadata} lists no image; check base.pokemon_type")
    return examples


def dataset_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.caption.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(example.path.read_bytes()).digest())
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts: what a cache entry or a checkpoint depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def pixel_batch(examples: list[Example], flip: bool) -> torch.Tensor:
    images = (Image.open(example.path).convert("RGB") for example in examples)
    if flip:
        images = (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images)
    return to_unit_range(images)


@dataclass
class Encoded:
    """What the training loop reads instead of images and captions.

    mean/std: the VAE posterior of every image (and of its mirror image when flips are on:
    index i + n), so each step samples latents without running the encoder. hidden: the text
    encoder's output per example, or None when the text encoder trains (it must run each step).
    """

    mean: torch.Tensor
    std: torch.Tensor
    hidden: torch.Tensor | None
    input_ids: torch.Tensor


@torch.inference_mode()
def encode_dataset(
    pipe: StableDiffusionPipeline,
    examples: list[Example],
    flips: bool,
    with_text: bool,
    cache_file: Path,
    batch_size: int = 32,
) -> Encoded:
    """Encode images and captions once; reuse the result from `cache_file` when present."""
    if cache_file.is_file():
        log.info("latents and text embeddings from the cache %s", cache_file)
        return Encoded(**torch.load(cache_file, weights_only=True))
    device, dtype = pipe.vae.device, pipe.vae.dtype
    means, stds = [], []
    for flip in (False, True) if flips else (False,):
        for start in range(0, len(examples), batch_size):
            pixels = pixel_batch(examples[start : start + batch_size], flip)
            posterior = pipe.vae.encode(pixels.to(device, dtype)).latent_dist
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
    input_ids = tokenize(pipe.tokenizer, [e.caption for e in examples])
    hidden = None
    if with_text:
        hidden = torch.cat(
            [
                pipe.text_encoder(input_ids[i : i + batch_size].to(device))[0].float().cpu()
                for i in range(0, len(examples), batch_size)
            ]
        )
    encoded = Encoded(torch.cat(means), torch.cat(stds), hidden, input_ids)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = _serialise(encoded.__dict__)
    atomic_write_bytes(cache_file, buffer)
    return encoded


def _serialise(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint in one rename: a run killed while saving keeps the previous one."""
    atomic_write_bytes(path, _serialise(state))


def load_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this run (same fingerprint), else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except (OSError, RuntimeError, EOFError) as error:
        log.warning("ignoring an unreadable checkpoint %s (%s)", path, error)
        return None
    if state.get("fingerprint") != expected:
        log.info("the checkpoint in %s is from other params or data: starting over", path)
        return None
    return state


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model)


def save_lora(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
    """pytorch_lora_weights.safetensors in the diffusers format (pipe.load_lora_weights)."""
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(lora_state(unet)),
        text_encoder_lora_layers=(
            convert_state_dict_to_diffusers(lora_state(text_encoder)) if text_encoder else None
        ),
        safe_serialization=True,
    )
