"""Stage set_up_diffusers: make the base model available offline, and record where it is.

model.base tiny (the default) copies the shipped pretrained tiny Stable Diffusion
(stages/models/tiny_sd/pretrained, made by `python -m stages.pretrain_tiny`) into place after
checking every file's sha256 against its record: a fixed, known input, as a hub model pinned to a
commit is. tiny-scratch pretrains it anew with the recipe in model.tiny (VAE first, then UNet +
text encoder with caption dropout), deterministic by step count. A Hugging Face id is downloaded
through the hub cache (HF_HOME and HF_HUB_OFFLINE apply) and its resolved commit is recorded; a
local folder is used as it is. Everything downstream loads the base through
stages.models.diffusion.load_pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image, ImageDraw

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.determinism import deterministic_torch
from stages.common.errors import StageError
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.common.params import ModelParams, load_params
from stages.data.pokemon import TYPES
from stages.models.shipped import SHIPPED, SHIPPED_RECORD, save_half, upcast_copy, verify
from stages.models.tiny_model import TINY_SIZE, pretrain

log = logging.getLogger(__name__)

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


def set_up_shipped(seed: int, out: Path) -> dict:
    """Verify the shipped weights against their record and put them into `out`, upcast to
    float32 (exactly: every float16 is a float32)."""
    if not SHIPPED_RECORD.is_file():
        raise StageError(
            f"{SHIPPED_RECORD} not found: the shipped tiny base model is missing from this "
            "checkout; restore it with `git checkout -- stages/models/tiny_sd` or set model.base "
            "to tiny-scratch to pretrain one (about an hour on 2 CPU cores)"
        )
    shipped = json.loads(SHIPPED_RECORD.read_text(encoding="utf-8"))
    verify(SHIPPED, shipped["files"])
    target = out / paths.TINY_PIPELINE.name
    upcast_copy(SHIPPED, target)
    pipe = StableDiffusionPipeline.from_pretrained(target)
    sample_grid(pipe, SAMPLE_PROMPTS, seed).save(out / paths.BASE_SAMPLES.name)
    log.info("shipped tiny base model (code %s) verified and in place", shipped["code"]["commit"])
    return {
        "kind": "tiny",
        "path": paths.TINY_PIPELINE.as_posix(),
        "fingerprint": folder_fingerprint(target, content=True),
        "made_with_code": shipped["code"]["commit"],
        "prompt_following": shipped["prompt_following"]["overall"],
    }


def set_up_scratch(model: ModelParams, seed: int, out: Path) -> dict:
    """Pretrain the tiny model with the recipe model.tiny, rounded to float16 as the shipped
    one is: the shipped recipe gives the shipped model's files."""
    pipe, stats = pretrain(model.tiny, seed, TINY_SIZE)
    target = out / paths.TINY_PIPELINE.name
    save_half(pipe, out / "float16")
    upcast_copy(out / "float16", target)
    shutil.rmtree(out / "float16")
    pipe = StableDiffusionPipeline.from_pretrained(target)
    sample_grid(pipe, SAMPLE_PROMPTS, seed).save(out / paths.BASE_SAMPLES.name)
    log.info("tiny base model pretrained: %s", stats)
    return {
        "kind": "tiny-scratch",
        "path": paths.TINY_PIPELINE.as_posix(),
        "fingerprint": folder_fingerprint(target, content=True),
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
    deterministic_torch()
    params = load_params("base", "model")
    model = params.model
    with atomic_dir(paths.BASE_MODEL) as out:
        if model.base == "tiny":
            record = set_up_shipped(params.base.seed, out)
        elif model.base == "tiny-scratch":
            record = set_up_scratch(model, params.base.seed, out)
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
