"""Benchmark: train_lora's cached latents and text embeddings against a loop that does what the
diffusers example's dataset transform and training step do on every step (open and resize the
original image, flip, tokenize, run the text encoder and the VAE); and generation one image per
call against batched calls, under inference mode.

    python -m bench.train_throughput                 # the tiny model, CPU
    python -m bench.train_throughput --sd15 --size 512 --dtype bf16   # SD 1.5 architecture, GPU

--sd15 builds Stable Diffusion 1.5's UNet, VAE and text encoder from their published configs
(bench/sd15/*.json) with random weights: nothing is downloaded. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from stages.common.params import GenerateParams, TrainLoraParams
from stages.data.images import png_bytes, to_square
from stages.data.synthetic import creature_rng, draw_creature
from stages.generate_text_to_image import draw
from stages.models.diffusion import pick_device, tokenize
from stages.models.lora import encode_dataset, read_dataset
from stages.models.tensors import to_unit_range
from stages.models.tiny_model import assemble, build_components, build_tokenizer
from stages.train_lora import denoising_loss

SD15 = Path(__file__).with_name("sd15")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_dataset(folder: Path, count: int, size: int) -> None:
    """Water creatures with captions, a stand-in for the LoRA training set: raw 128 px sprites
    in folder/raw (as data/external holds them) and `size` px training images in folder."""
    (folder / "raw").mkdir()
    rows = []
    for i in range(count):
        sprite = draw_creature("Water", creature_rng(0, i), 128)
        name = f"{i:04d}.png"
        (folder / "raw" / name).write_bytes(png_bytes(sprite))
        (folder / name).write_bytes(png_bytes(to_square(sprite, size, "#FFFFFF")))
        rows.append(json.dumps({"file_name": name, "text": "a pkmnlora pokemon"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def load_and_transform(paths: list[Path], size: int, flip: bool) -> torch.Tensor:
    """What the diffusers example's dataset transform does on every access: open the original
    image, resize it, flip it, turn it into a normalised tensor."""
    images = (to_square(Image.open(path), size, "#FFFFFF") for path in paths)
    if flip:
        images = (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images)
    return to_unit_range(images)


def build_pipe(sd15: bool, seed: int = 0):
    if not sd15:
        return assemble(build_components(seed))
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 77
    components = {
        "tokenizer": tokenizer,
        "text_encoder": CLIPTextModel(CLIPTextConfig(**_read("text_encoder"))),
        "vae": AutoencoderKL(**_read("vae")),
        "unet": UNet2DConditionModel(**_read("unet")),
        "scheduler": DDPMScheduler(**_read("scheduler")),
    }
    return assemble(components)


def _read(name: str) -> dict:
    config = json.loads((SD15 / f"{name}.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def prepare(pipe, device: torch.device, dtype: torch.dtype, cfg: TrainLoraParams):
    pipe.to(device)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
        model.to(dtype=dtype)
    pipe.unet.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules),
        )
    )
    trainable = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return torch.optim.AdamW(trainable, lr=cfg.learning_rate)


def timed_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device):
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_cached(pipe, examples, cfg, steps, warmup, device, dtype) -> dict:
    optimizer = prepare(pipe, device, dtype, cfg)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling = pipe.vae.config.scaling_factor
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        encoded = encode_dataset(pipe, examples, True, True, Path(tmp) / "cache.pt")
    encode_seconds = time.perf_counter() - started
    n = len(examples)

    def step(i: int) -> None:
        rng = np.random.default_rng([0, i])
        generator = torch.Generator().manual_seed(i)
        index = torch.from_numpy(rng.integers(0, 2 * n, cfg.batch_size))
        mean, std = encoded.mean[index], encoded.std[index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling
        loss = denoising_loss(
            pipe.unet, scheduler, latents, encoded.hidden[index % n], generator, cfg
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed_steps(step, steps, warmup, device)
    return {"seconds": seconds, "setup": encode_seconds}


def train_encode_every_step(pipe, examples, cfg, steps, warmup, device, dtype) -> dict:
    optimizer = prepare(pipe, device, dtype, cfg)
    size = Image.open(examples[0].path).width
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling = pipe.vae.config.scaling_factor

    def step(i: int) -> None:
        rng = np.random.default_rng([0, i])
        generator = torch.Generator().manual_seed(i)
        batch = [examples[j] for j in rng.integers(0, len(examples), cfg.batch_size)]
        raw = [e.path.parent / "raw" / e.path.name for e in batch]
        with torch.no_grad():
            pixels = load_and_transform(raw, size, flip=bool(rng.random() < 0.5))
            latents = pipe.vae.encode(pixels.to(device, dtype)).latent_dist.sample() * scaling
            ids = tokenize(pipe.tokenizer, [e.caption for e in batch]).to(device)
            hidden = pipe.text_encoder(ids)[0]
        loss = denoising_loss(pipe.unet, scheduler, latents, hidden, generator, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"seconds": timed_steps(step, steps, warmup, device), "setup": 0.0}


def generation(pipe, device, dtype, size: int, batch_sizes: list[int], count: int) -> list[dict]:
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for batch_size in batch_sizes:
        settings = GenerateParams(
            prompts=["a pkmnlora pokemon"],
            seeds=list(range(count)),
            num_inference_steps=25,
            batch_size=batch_size,
        )
        draw(pipe, settings, 1.0, f"batch {batch_size}", size)  # warm-up
        sync(device)
        start = time.perf_counter()
        draw(pipe, settings, 1.0, f"batch {batch_size}", size)
        sync(device)
        seconds = time.perf_counter() - start
        rows.append({"batch": batch_size, "seconds": seconds, "images_per_s": count / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sd15", action="store_true", help="SD 1.5's architecture, random weights"
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=56, help="training images")
    parser.add_argument("--generate", type=int, default=16, help="images per generation run")
    args = parser.parse_args()
    device, dtype = pick_device(), DTYPES[args.dtype]
    torch.manual_seed(0)
    cfg = TrainLoraParams(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_dataset(folder, args.images, args.size)
        examples = read_dataset(folder)
        results = {}
        for name, method in (
            ("encode every step", train_encode_every_step),
            ("cached (train_lora)", train_cached),
        ):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            results[name] = method(
                build_pipe(args.sd15), examples, cfg, args.steps, 3, device, dtype
            )
            if device.type == "cuda":
                results[name]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        generated = generation(
            build_pipe(args.sd15),
            device,
            dtype,
            args.size,
            sorted({1, min(8, args.generate)}),
            args.generate,
        )
        generation_peak = (
            torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        )

    model = "SD 1.5 architecture (random weights)" if args.sd15 else "tiny model"
    cpu = platform.processor() or platform.machine()
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    )
    print(f"\n{model}, {args.size} px, {args.dtype}, batch {args.batch_size}, {args.steps} steps")
    print(f"on {where}, torch {torch.__version__}\n")
    header = ["training loop", "steps/s", "images/s", "one-off encoding (s)", "peak GPU GiB"]
    print_row([*header, "speed-up"])
    print("|---|---:|---:|---:|---:|---:|")
    slow = results["encode every step"]["seconds"]
    for name, r in results.items():
        steps_per_s = args.steps / r["seconds"]
        speed_up = f"{slow / r['seconds']:.2f}x"
        images_per_s = f"{steps_per_s * args.batch_size:.1f}"
        setup = f"{r['setup']:.2f}"
        print_row(
            [name, f"{steps_per_s:.2f}", images_per_s, setup, _gib(r.get("peak_gb")), speed_up]
        )
    print()
    print_row(["generation (25 steps, inference mode)", "images/s", "s/image", "peak GPU GiB"])
    print("|---|---:|---:|---:|")
    for r in generated:
        rate = r["images_per_s"]
        print_row([f"batch {r['batch']}", f"{rate:.2f}", f"{1 / rate:.3f}", _gib(generation_peak)])


def print_row(cells: list[str]) -> None:
    print("| " + " | ".join(cells) + " |")


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
