"""Stage set_up_diffusers: make the base model available offline, and record where it is.

model.base tiny builds the tiny Stable Diffusion from stages/tiny_sd and pretrains it on
synthetic creatures (VAE first, then UNet + text encoder with caption dropout), within
model.tiny.max_minutes. A Hugging Face id is downloaded through the hub cache (HF_HOME and
HF_HUB_OFFLINE apply) and its resolved commit is recorded; a local folder is used as it is.
Everything downstream loads the base through stages.diffusion.load_pipeline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image, ImageDraw

from stages import paths
from stages.cli import run_stage
from stages.errors import StageError
from stages.fsutil import atomic_dir, atomic_write_json
from stages.params import ModelParams, load_params
from stages.pokemon import TYPES
from stages.tiny_model import (
    assemble,
    build_components,
    make_corpus,
    pretrain_unet,
    pretrain_vae,
)

log = logging.getLogger(__name__)

TINY_SIZE = 64  # pixels: the tiny model's native resolution
SAMPLE_PROMPTS = [f"a {t.lower()} type pokemon" for t in TYPES] + [
    "a pokemon",
    "a pkmnlora pokemon",
]


def sample_grid(pipe: StableDiffusionPipeline, prompts: list[str], seed: int) -> Image.Image:
    """One image per prompt, labelled: a look at what the base model draws."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    with torch.inference_mode():
        images = pipe(
            prompts, num_inference_steps=25, guidance_scale=4.0, generator=generators
        ).images
    side, label = images[0].width, 12
    columns = 5
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * side, rows * (side + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = (i % columns) * side, (i // columns) * (side + label)
        grid.paste(image, (x, y + label))
        draw.text(
            (x + 2, y), prompt.removeprefix("a ").removesuffix(" pokemon")[:12], fill="black"
        )
    return grid


def set_up_tiny(model: ModelParams, seed: int, out: Path) -> dict:
    settings = model.tiny
    start = time.monotonic()
    budget = settings.max_minutes * 60
    components = build_components(seed)
    corpus = make_corpus(settings.corpus_size, TINY_SIZE, seed)
    stats = pretrain_vae(
        components["vae"], corpus, settings.vae_steps, settings.vae_batch_size,
        settings.learning_rate, seed, deadline=start + 0.3 * budget,
    )  # fmt: skip
    stats |= pretrain_unet(
        components, corpus, settings.unet_steps, settings.unet_batch_size,
        settings.learning_rate, seed, deadline=start + budget,
    )  # fmt: skip
    pipe = assemble(components)
    pipe.save_pretrained(out / paths.TINY_PIPELINE.name)
    sample_grid(pipe, SAMPLE_PROMPTS, seed).save(out / paths.BASE_SAMPLES.name)
    stats["seconds"] = round(time.monotonic() - start, 1)
    log.info("tiny base model pretrained in %.0f s: %s", stats["seconds"], stats)
    fingerprint = folder_fingerprint(out / paths.TINY_PIPELINE.name, content=True)
    return {
        "kind": "tiny",
        "path": paths.TINY_PIPELINE.as_posix(),
        "fingerprint": fingerprint,
        "pretraining": stats,
    }


def set_up_hub(model_id: str, revision: str | None) -> dict:
    """Download (or find in the hub cache) the pipeline files; record the resolved commit."""
    try:
        folder = Path(StableDiffusionPipeline.download(model_id, revision=revision))
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (
            "HF_HUB_OFFLINE is set: the model must already be in the hub cache (HF_HOME)"
            if offline
            else "check the id, your network and, for gated models, `huggingface-cli login`"
        )
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StageError(
            f"model.base {model_id}: cannot get it from the hub ({first}); {hint}"
        ) from None
    log.info("%s at commit %s in %s", model_id, folder.name, folder)
    return {"kind": "hub", "id": model_id, "revision": revision, "commit": folder.name}


def folder_fingerprint(folder: Path, content: bool) -> str:
    """The identity of a model folder: a hash of its files' names and content, or, for large
    folders, of their names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}\n".encode())
        digest.update(path.read_bytes() if content else str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def main() -> None:
    params = load_params("base", "model")
    model = params.model
    with atomic_dir(paths.BASE_MODEL) as out:
        if model.base == "tiny":
            record = set_up_tiny(model, params.base.seed, out)
        elif (Path(model.base).expanduser() / "model_index.json").is_file():
            folder = Path(model.base).expanduser().resolve()
            record = {
                "kind": "local",
                "path": str(folder),
                "fingerprint": folder_fingerprint(folder, content=False),
            }
        else:
            record = set_up_hub(model.base, model.revision)
        atomic_write_json(out / paths.BASE_MODEL_RECORD.name, record)
    log.info("base model ready: %s", paths.BASE_MODEL_RECORD)


if __name__ == "__main__":
    run_stage(main)
