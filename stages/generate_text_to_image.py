"""Stage generate_text_to_image: the base and the LoRA draw every prompt x seed from the same
initial noise, so each pair differs only by the LoRA.

Writes outputs/generated/{base,lora}/<prompt-slug>/seed-<n>.png and grid.png (rows: prompt x
seed; columns: base, LoRA), all declared as image plots for `dvc plots diff`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.determinism import deterministic_torch
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.common.params import GenerateParams, load_params
from stages.models.diffusion import load_pipeline, pick_device, pick_dtype, read_model_record

log = logging.getLogger(__name__)


def prompt_slug(prompt: str) -> str:
    """'a pkmnlora pokemon, Water!' -> 'a-pkmnlora-pokemon-water' (stable folder names)."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:80] or "prompt"


def image_path(root: Path, variant: str, prompt: str, seed: int) -> Path:
    return root / variant / prompt_slug(prompt) / f"seed-{seed}.png"


def jobs(settings: GenerateParams) -> list[tuple[str, int]]:
    return [(prompt, seed) for prompt in settings.prompts for seed in settings.seeds]


def initial_noise(pipe, seed: int, height: int, width: int) -> torch.Tensor:
    """The starting latents of one image: from its seed alone, on the CPU, so they are the same
    for the base and the LoRA and on any device."""
    shape = (
        1,
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def draw(
    pipe, settings: GenerateParams, lora_scale: float, desc: str, size: int | None = None
) -> list[Image.Image]:
    """Every prompt x seed, `settings.batch_size` per call, at `size` px (the model's own size
    by default)."""
    todo = jobs(settings)
    height = width = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(todo), settings.batch_size), desc=desc, unit="batch"):
        batch = todo[start : start + settings.batch_size]
        latents = torch.cat([initial_noise(pipe, seed, height, width) for _, seed in batch])
        with torch.inference_mode():
            result = pipe(
                [prompt for prompt, _ in batch],
                latents=latents.to(pipe.device, pipe.unet.dtype),
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                cross_attention_kwargs={"scale": lora_scale},
                height=height,
                width=width,
            )
        images.extend(result.images)
    return images


def comparison_grid(
    settings: GenerateParams, base: list[Image.Image], lora: list[Image.Image]
) -> Image.Image:
    """Rows of prompt x seed, columns base | LoRA, each row labelled; small images enlarged
    (nearest neighbour) to at least 128 px so that a person can see them."""
    scale = max(1, -(-128 // base[0].width))
    side = base[0].width * scale
    label, header = 160, 16
    rows = jobs(settings)
    grid = Image.new("RGB", (label + 2 * side, header + len(rows) * side), "white")
    text = ImageDraw.Draw(grid)
    text.text((label + 4, 2), "base", fill="black")
    text.text((label + side + 4, 2), "LoRA", fill="black")
    for i, ((prompt, seed), b, lo) in enumerate(zip(rows, base, lora, strict=True)):
        y = header + i * side
        text.text((4, y + side // 2 - 6), f"{prompt[:24]} #{seed}", fill="black")
        for column, image in enumerate((b, lo)):
            enlarged = image.resize((side, side), Image.Resampling.NEAREST)
            grid.paste(enlarged, (label + column * side, y))
    return grid


def main() -> None:
    deterministic_torch()
    params = load_params("model", "generate")
    settings = params.generate
    device = pick_device()
    dtype = pick_dtype(params.model.dtype, device)
    record = read_model_record()
    pipe = load_pipeline(
        paths.LORA, record=record, device=device, dtype=dtype, scheduler=settings.scheduler
    )
    pipe.disable_lora()
    base = draw(pipe, settings, 1.0, "base images")
    pipe.enable_lora()
    lora = draw(pipe, settings, settings.lora_scale, "lora images")
    with atomic_dir(paths.GENERATED) as out:
        for variant, images in (("base", base), ("lora", lora)):
            for (prompt, seed), image in zip(jobs(settings), images, strict=True):
                target = image_path(out, variant, prompt, seed)
                target.parent.mkdir(parents=True, exist_ok=True)
                image.save(target)
        comparison_grid(settings, base, lora).save(out / "grid.png")
        atomic_write_json(
            out / "index.json",
            [
                {
                    "prompt": prompt,
                    "seed": seed,
                    "base": image_path(Path(), "base", prompt, seed).as_posix(),
                    "lora": image_path(Path(), "lora", prompt, seed).as_posix(),
                }
                for prompt, seed in jobs(settings)
            ],
        )
    log.info(
        "%d base and %d LoRA images in %s; side by side in %s",
        len(base),
        len(lora),
        paths.GENERATED,
        paths.GENERATED / "grid.png",
    )


if __name__ == "__main__":
    run_stage(main)
