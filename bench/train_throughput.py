"""Benchmark: the train_lora stage itself, as `dvc repro` runs it, against a loop that does what
the diffusers example's dataset transform and training step do on every step (open and resize
the original image, flip, tokenize, run the text encoder and the VAE), with the floor beside
them: the UNet's forward and backward pass alone, on a batch of the same shape. And generation
one image per call against batched calls, under inference mode.

    python -m bench.train_throughput                 # the tiny model, CPU
    python -m bench.train_throughput --sd15 --size 512 --dtype bf16   # SD 1.5 architecture, GPU

The stage runs twice in a scratch folder (`python -m stages.train_lora`, the model saved there as
a local diffusers folder): for --short and for --long steps. Its steady-state rate is the extra
steps over the extra seconds of its training loop (timing.json); its start-up (imports, loading,
encoding the latents, writing the LoRA and its sample images) is the short run's wall time less
its loop, reported apart. --sd15 builds Stable Diffusion 1.5's UNet, VAE and text encoder from
their published configs (bench/sd15/*.json) with random weights: nothing is downloaded. Prints
a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
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

from stages.common.determinism import THREADS
from stages.common.params import GenerateParams, TrainLoraParams
from stages.data.images import png_bytes, to_square
from stages.data.synthetic import creature_rng, draw_creature
from stages.generate_text_to_image import draw
from stages.models.diffusion import pick_device, tokenize
from stages.models.lora import read_dataset
from stages.models.tensors import to_unit_range
from stages.models.tiny_model import assemble, build_components, build_tokenizer
from stages.train_lora import denoising_loss
from tests.conftest import Workdir

SD15 = Path(__file__).with_name("sd15")
# the rows of the training table
FLOOR = "UNet forward + backward (the floor)"
STAGE = "train_lora stage, steady state"
EXAMPLE = "encode every step (the diffusers example)"
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


def unet_floor(pipe, examples, cfg, steps, warmup, device, dtype) -> dict:
    """The UNet's forward and backward pass with the LoRA, nothing else: no data, no noise
    schedule, no optimiser. What a training step cannot go below."""
    prepare(pipe, device, dtype, cfg)
    size = Image.open(examples[0].path).width // pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    latents = torch.randn(cfg.batch_size, channels, size, size, device=device, dtype=dtype)
    with torch.no_grad():
        ids = tokenize(pipe.tokenizer, [examples[0].caption] * cfg.batch_size).to(device)
        hidden = pipe.text_encoder(ids)[0]
    timesteps = torch.randint(0, 1000, (cfg.batch_size,), device=device)
    trained = [p for p in pipe.unet.parameters() if p.requires_grad]

    def step(i: int) -> None:
        prediction = pipe.unet(latents, timesteps, hidden, return_dict=False)[0]
        prediction.float().square().mean().backward()
        for parameter in trained:
            parameter.grad = None

    return {"seconds": timed_steps(step, steps, warmup, device), "setup": 0.0}


def stage_runs(pipe, dataset: Path, cfg, dtype_name: str, short: int, long: int) -> dict:
    """The train_lora stage, run for `short` and for `long` steps: its steady-state seconds for
    `steps` steps and its start-up."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Workdir(Path(tmp) / "work", Path(tmp) / "cache")
        (work.path / "data/processed").mkdir(parents=True)
        shutil.copytree(dataset, work.path / "data/processed/lora_dataset")
        pipe.save_pretrained(Path(tmp) / "model")
        model = {"base": str(Path(tmp) / "model")}
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[dtype_name]
        settings = {
            "batch_size": cfg.batch_size,
            "rank": cfg.rank,
            "mixed_precision": precision,
            "checkpoint_every": 0,
            "validation_every": 0,
        }
        work.write_params(model=model, train_lora=settings)
        work.run("set_up_diffusers")
        runs = {}
        for steps in (short, long):
            work.write_params(model=model, train_lora={**settings, "max_steps": steps})
            start = time.perf_counter()
            work.run("train_lora")
            wall = time.perf_counter() - start
            timing = json.loads((work.path / "outputs/train_lora/timing.json").read_text())
            runs[steps] = {"wall": wall, "loop": timing["seconds"]}
    steady = (runs[long]["loop"] - runs[short]["loop"]) / (long - short)
    return {
        "step_seconds": steady,
        "startup": runs[short]["wall"] - runs[short]["loop"],
        "runs": runs,
    }


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
    parser.add_argument("--steps", type=int, default=60, help="steps of the in-process loops")
    parser.add_argument("--short", type=int, default=20, help="steps of the stage's short run")
    parser.add_argument("--long", type=int, default=520, help="steps of the stage's long run")
    parser.add_argument("--images", type=int, default=56, help="training images")
    parser.add_argument("--generate", type=int, default=16, help="images per generation run")
    args = parser.parse_args()
    device, dtype = pick_device(), DTYPES[args.dtype]
    torch.set_num_threads(THREADS)  # what the stage runs on (stages/common/determinism.py)
    torch.manual_seed(0)
    cfg = TrainLoraParams(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_dataset(folder, args.images, args.size)
        examples = read_dataset(folder)
        stage = stage_runs(build_pipe(args.sd15), folder, cfg, args.dtype, args.short, args.long)
        results = {}
        for name, method in (
            (FLOOR, unet_floor),
            (EXAMPLE, train_encode_every_step),
        ):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            results[name] = method(
                build_pipe(args.sd15), examples, cfg, args.steps, 3, device, dtype
            )
            results[name]["seconds"] /= args.steps  # per step
            if device.type == "cuda":
                results[name]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        results[STAGE] = {
            "seconds": stage["step_seconds"],
            "setup": stage["startup"],
        }
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
    print(f"\n{model}, {args.size} px, {args.dtype}, batch {args.batch_size}, rank {cfg.rank}")
    print(f"on {where}, torch {torch.__version__}\n")
    header = ["training", "steps/s", "images/s", "ms/step", "start-up (s)", "peak GPU GiB"]
    print_row([*header, "x encode every step"])
    print("|---|---:|---:|---:|---:|---:|---:|")
    slow = results[EXAMPLE]["seconds"]
    for name in (
        FLOOR,
        STAGE,
        EXAMPLE,
    ):
        r = results[name]
        steps_per_s = 1 / r["seconds"]
        print_row(
            [
                name,
                f"{steps_per_s:.2f}",
                f"{steps_per_s * args.batch_size:.1f}",
                f"{1000 * r['seconds']:.1f}",
                f"{r['setup']:.1f}" if r["setup"] else "-",
                _gib(r.get("peak_gb")),
                f"{slow / r['seconds']:.2f}x",
            ]
        )
    runs = stage["runs"]
    print(
        "\nthe stage: "
        + "; ".join(
            f"{steps} steps: {run['wall']:.1f} s wall, {run['loop']:.1f} s in its loop"
            for steps, run in runs.items()
        )
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
