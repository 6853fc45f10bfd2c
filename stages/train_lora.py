"""Stage train_lora: fine-tune the base model's UNet with LoRA on the training set.

The diffusers recipe: base frozen, LoraConfig + add_adapter on the attention layers, trainable
params upcast to float32, accelerate for device, mixed precision and gradient accumulation, an
lr schedule with warm-up. Latents and text embeddings are encoded once, not on every step. Every
step's randomness comes from (base.seed, step), so a run resumed from a checkpoint continues
exactly where it stopped. Loss per step goes to dvclive; the LoRA is saved in the diffusers
format with the resolved params beside it.

With train_lora.num_processes above 1 (or an accelerate config file) the stage runs itself under
`accelerate launch` (stages/common/launch.py), data parallel: every process draws the step's
whole batch from (base.seed, step) and trains on its share of it, accelerate averages the
gradients, and the main process alone logs, saves checkpoints and writes the LoRA. A checkpoint
holds no process count: a run resumes with any.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params, compute_snr
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from PIL import Image
from tqdm import tqdm

from stages.common import launch, paths
from stages.common.cli import end, multi_process, run_stage
from stages.common.determinism import THREADS, deterministic_torch
from stages.common.errors import StageError, StageInterrupted
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.common.params import TrainLoraParams, load_params
from stages.common.tracking import close_live, open_live
from stages.models.diffusion import load_pipeline, read_model_record
from stages.models.export import (
    CARD_GUIDANCE,
    CARD_SEEDS,
    CARD_STEPS,
    kohya_metadata,
    kohya_state_dict,
    model_card,
    save_kohya,
)
from stages.models.lora import (
    Encoded,
    dataset_digest,
    encode_dataset,
    fingerprint,
    load_checkpoint,
    lora_state,
    read_dataset,
    save_checkpoint,
    save_lora,
)

log = logging.getLogger(__name__)

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Settings that do not change what is trained: a checkpoint stays valid when only these change
# (the process count changes the order of float sums only: a run resumes with any count).
NOT_IN_FINGERPRINT = {
    "checkpoint_every",
    "validation_every",
    "validation_prompt",
    "num_processes",
    "accelerate_config",
}
LIVE_SYNC_SECONDS = 1.0  # how often dvclive's summary and step signal are refreshed
# train_lora.mixed_precision values that keep the frozen weights in half precision
HALF_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}


def add_lora(model: torch.nn.Module, config: LoraConfig, key: str) -> None:
    try:
        model.add_adapter(config)
    except ValueError as error:
        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise StageError(
            f"{key} = {sorted(config.target_modules)}: {error}; linear layers of this model "
            f"are named {', '.join(names)}"
        ) from None


class StopRequest:
    """Ctrl-C or SIGTERM during training: finish the current step, save a checkpoint, stop.

    Under a launcher every signal asks for that stop: Ctrl-C reaches each training process from
    the terminal and again from the launcher, which then sends SIGTERM, so a second signal is
    not a second Ctrl-C there."""

    def __init__(self, abort_on_second: bool = True) -> None:
        self.requested = False
        self.abort_on_second = abort_on_second
        self.previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            if self.abort_on_second:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            return
        self.requested = True
        log.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def step_randomness(
    seed: int, step: int, micro: int
) -> tuple[np.random.Generator, torch.Generator]:
    """The random streams of one micro-batch: a function of (seed, step), never of history.
    The same in every process: each draws the whole batch and trains on its share."""
    rng = np.random.default_rng([seed, step, micro])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def seed_dropout(seed: int, step: int, micro: int, process: int) -> None:
    """torch's global generator, which LoRA dropout draws from, set from (seed, step, micro,
    process): a resumed run drops what the uninterrupted one did, and processes differ."""
    torch.manual_seed(int(np.random.default_rng([seed, step, micro, process, 1]).integers(2**62)))


def draw(
    pipe_parts: dict, prompt: str, seeds: list[int], steps: int = 20, guidance: float = 4.0
) -> list[Image.Image]:
    """The LoRA as trained so far draws `prompt` once per seed (DPM-Solver++), in one call."""
    pipe = StableDiffusionPipeline(
        **pipe_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()  # no LoRA dropout in a drawing (the next training step sets train() again)
    with torch.inference_mode():
        return pipe(
            prompt,
            num_images_per_prompt=len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        ).images


def write_lora(
    out: Path, run: TrainingRun, seed: int, record: dict, examples: list, digest: str, run_id: str
) -> None:
    """The LoRA folder: the diffusers file, the kohya file with its metadata, the model card
    with its sample images (drawn here, by the LoRA just trained), the resolved params."""
    cfg = run.cfg
    unet, text_encoder = run.trained_unwrapped()
    save_lora(out, unet, text_encoder)
    with Image.open(examples[0].path) as first:
        resolution = first.width
    metadata = kohya_metadata(
        cfg.model_dump(), seed, record, [e.caption for e in examples], resolution, digest
    )
    weights = kohya_state_dict(
        lora_state(unet), lora_state(text_encoder) if text_encoder else None, cfg.alpha
    )
    save_kohya(out, weights, metadata)
    trigger = metadata["modelspec.trigger_phrase"]
    images = draw(run.pipeline_parts(), trigger, CARD_SEEDS, CARD_STEPS, CARD_GUIDANCE)
    (out / paths.LORA_SAMPLES).mkdir()
    samples = []
    for card_seed, image in zip(CARD_SEEDS, images, strict=True):
        samples.append(f"{paths.LORA_SAMPLES}/sample-{card_seed}.png")
        image.save(out / samples[-1])
    (out / paths.LORA_CARD).write_text(model_card(metadata, record, samples), encoding="utf-8")
    atomic_write_json(
        out / "params.json",
        {
            "train_lora": cfg.model_dump(),
            "seed": seed,
            "base_model": record,
            "training_images": len(examples),
            "fingerprint": run_id,
        },
    )


def train(cfg: TrainLoraParams, seed: int) -> None:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise StageError(
            "train_lora.mixed_precision = 'fp16' needs a CUDA GPU; use 'bf16' or 'no'"
        )
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        # accelerate runs several processes on the CPU (gloo) only when asked for the CPU
        cpu=multi_process() and not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    if not main:  # one voice: the main process logs and shows the progress bar
        logging.getLogger().setLevel(logging.WARNING)
    if cfg.batch_size % accelerator.num_processes:
        raise StageError(
            f"train_lora.batch_size = {cfg.batch_size} does not split among the "
            f"{accelerator.num_processes} processes the launcher started; make it a multiple"
        )
    set_seed(seed)
    record = read_model_record()
    examples = read_dataset(paths.LORA_DATASET)
    digest = dataset_digest(examples)
    run_id = fingerprint(cfg.model_dump(exclude=NOT_IN_FINGERPRINT), seed, record, digest)
    pipe = frozen_pipeline(cfg, record, accelerator)
    cache_key = fingerprint(
        record, digest, cfg.random_flip, cfg.train_text_encoder, cfg.mixed_precision
    )
    with accelerator.local_main_process_first():  # one per machine encodes, the rest read it
        encoded = encode_dataset(
            pipe,
            examples,
            cfg.random_flip,
            with_text=not cfg.train_text_encoder,
            cache_file=paths.user_cache_dir() / "latents" / f"{cache_key}.safetensors",
        )
    run = TrainingRun(cfg, accelerator, pipe)
    checkpoint_file = paths.user_cache_dir() / "checkpoints" / run_id / "checkpoint.safetensors"
    start_step, history = run.resume(load_checkpoint(checkpoint_file, run_id))
    if start_step:
        log.info("resuming from the checkpoint at step %d (%s)", start_step, checkpoint_file)

    live = open_live(paths.TRAIN_LORA) if main else None
    for entry in history if main else []:  # the steps done before: one continuous curve
        log_step(live, entry, sync=entry is history[-1])
    pacer = Pacer(LIVE_SYNC_SECONDS)
    started = time.monotonic()
    stop = StopRequest(abort_on_second=not launch.launched())
    bar = tqdm(
        range(start_step, cfg.max_steps),
        desc="train lora",
        unit="step",
        initial=start_step,
        total=cfg.max_steps,
        disable=not main,
    )
    for step in bar:
        loss, stopping = run.step(encoded, seed, step, stop.requested)
        entry = {"step": step, "loss": loss, "lr": run.lr_scheduler.get_last_lr()[0]}
        history.append(entry)
        done = step + 1
        if main:
            log_step(live, entry, sync=done == cfg.max_steps or stopping or pacer.due())
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn at its own pace
            if cfg.validation_every and done % cfg.validation_every == 0:
                (image,) = draw(run.pipeline_parts(), cfg.validation_prompt, [seed])
                live.log_image(f"validation/step-{done:06d}.png", image)
            periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
            if (periodic or stopping) and done < cfg.max_steps:
                save_checkpoint(checkpoint_file, run.checkpoint(run_id, done, history))
        if stopping and done < cfg.max_steps:
            accelerator.wait_for_everyone()  # the checkpoint is written before any exits
            accelerator.end_training()
            if live is not None:
                live.end()
            if not main:
                end(130)  # the main process says it
            raise StageInterrupted(
                f"train_lora interrupted after step {done} of {cfg.max_steps}; checkpoint saved "
                f"in {checkpoint_file}. Run it again (dvc repro) to resume from there."
            )
    stop.restore()
    seconds = time.monotonic() - started
    accelerator.end_training()  # the other processes are done: the main one writes
    if not main:
        return
    metrics = run_metrics(history, cfg.max_steps)
    close_live(live, metrics)
    write_timing(cfg, start_step, seconds, accelerator.num_processes)

    with atomic_dir(paths.LORA) as out:
        write_lora(out, run, seed, record, examples, digest, run_id)
    checkpoint_file.unlink(missing_ok=True)
    log.info("LoRA saved to %s: %s", paths.LORA / paths.LORA_WEIGHTS, json.dumps(metrics))


def frozen_pipeline(
    cfg: TrainLoraParams, record: dict, accelerator: Accelerator
) -> StableDiffusionPipeline:
    """The base model on the training device, every weight frozen; in half precision for
    fp16/bf16, as the diffusers recipe keeps the frozen weights."""
    pipe = load_pipeline(record=record, device=accelerator.device)
    weight_dtype = HALF_PRECISION.get(cfg.mixed_precision)
    for model in (pipe.unet, pipe.text_encoder, pipe.vae):
        model.requires_grad_(False)
        if weight_dtype is not None:
            model.to(dtype=weight_dtype)
    return pipe


class TrainingRun:
    """The LoRA adapters on the frozen UNet (and text encoder), their optimiser and lr
    schedule, prepared by accelerate: one optimisation step at a time, and a checkpoint of all
    of it that a later run resumes from exactly."""

    def __init__(
        self, cfg: TrainLoraParams, accelerator: Accelerator, pipe: StableDiffusionPipeline
    ) -> None:
        self.cfg, self.accelerator, self.pipe = cfg, accelerator, pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        lora = {
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout,
            "init_lora_weights": "gaussian",
        }
        unet, text_encoder = pipe.unet, pipe.text_encoder
        targets = list(cfg.target_modules)
        add_lora(unet, LoraConfig(**lora, target_modules=targets), "train_lora.target_modules")
        trained = [unet]
        if cfg.train_text_encoder:
            add_lora(
                text_encoder,
                LoraConfig(**lora, target_modules=TEXT_ENCODER_TARGETS),
                "train_lora.train_text_encoder",
            )
            trained.append(text_encoder)
        if cfg.mixed_precision in HALF_PRECISION:
            cast_training_params(trained, dtype=torch.float32)
        self.params = [p for model in trained for p in model.parameters() if p.requires_grad]
        # One fused kernel for all the adapters' updates where torch has it (CPU, CUDA): the
        # per-tensor loop took 2.7 ms of a 60 ms step on the CPU, the fused one 0.5 ms.
        fused = accelerator.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            self.params, lr=cfg.learning_rate, weight_decay=1e-2, fused=fused or None
        )
        self.unet, self.optimizer = accelerator.prepare(unet, optimizer)
        # Stepped here once per optimizer step, not prepared: accelerate's wrapper steps a
        # schedule once per process, which would tie a checkpoint to its process count.
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=self.optimizer.optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        self.text_encoder = (
            accelerator.prepare(text_encoder) if cfg.train_text_encoder else text_encoder
        )
        self.trained = [self.unet, self.text_encoder] if cfg.train_text_encoder else [self.unet]
        # Each step's loss and stop request, summed over the processes, and the handle of the
        # last sum, held until this object goes: gloo's worker thread must never be the one to
        # drop the last reference to a sum of a tensor that Python made, or it waits for the
        # GIL while the main thread, holding it, destroys the process group and waits for that
        # thread (a hang at the end of one two-process run in twenty; torch issue 56297).
        self.shared = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        self.pending: torch.distributed.Work | None = None

    def trained_unwrapped(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The UNet and, when it is trained, the text encoder, as plain diffusers models."""
        unwrap = self.accelerator.unwrap_model
        return unwrap(self.unet), (
            unwrap(self.text_encoder) if self.cfg.train_text_encoder else None
        )

    def pipeline_parts(self) -> dict:
        """The parts of a StableDiffusionPipeline with the LoRA as trained so far."""
        unet, _ = self.trained_unwrapped()
        return {
            "vae": self.pipe.vae,
            "unet": unet,
            "tokenizer": self.pipe.tokenizer,
            "text_encoder": self.accelerator.unwrap_model(self.text_encoder),
            "scheduler": self.noise_scheduler,
        }

    def step(
        self, encoded: Encoded, seed: int, step: int, stop: bool = False
    ) -> tuple[float, bool]:
        """One optimisation step (gradient_accumulation micro-batches): its mean loss over the
        whole batch (every process's share), and whether any process was asked to stop (all
        stop after the same step, or the others would wait for it for ever)."""
        cfg, accelerator, n = self.cfg, self.accelerator, len(encoded.input_ids)
        self.unet.train()
        scaling = self.pipe.vae.config.scaling_factor
        share = cfg.batch_size // accelerator.num_processes
        mine = slice(accelerator.process_index * share, (accelerator.process_index + 1) * share)
        losses = []
        for micro in range(cfg.gradient_accumulation):
            rng, generator = step_randomness(seed, step, micro)
            if cfg.dropout:
                seed_dropout(seed, step, micro, accelerator.process_index)
            with accelerator.accumulate(*self.trained):
                index = torch.from_numpy(rng.integers(0, n, cfg.batch_size))
                if cfg.random_flip:
                    index = index + n * torch.from_numpy(rng.random(cfg.batch_size) < 0.5).long()
                mean, std = encoded.mean[index], encoded.std[index]
                latents = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling
                if cfg.train_text_encoder:
                    ids = encoded.input_ids[(index % n)[mine]].to(accelerator.device)
                    hidden = self.text_encoder(ids)[0]
                else:
                    hidden = encoded.hidden[(index % n)[mine]]
                loss = denoising_loss(
                    self.unet, self.noise_scheduler, latents, hidden, generator, cfg, mine
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.params, 1.0)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        loss = float(np.mean(losses))
        if accelerator.num_processes == 1:
            return loss, stop
        self.shared.copy_(torch.tensor([loss, float(stop)], dtype=torch.float64))
        self.pending = torch.distributed.all_reduce(self.shared, async_op=True)  # sums
        self.pending.wait()
        total, stops = self.shared.tolist()
        return total / accelerator.num_processes, stops > 0

    def checkpoint(self, run_id: str, done: int, history: list[dict]) -> dict:
        unet, text_encoder = self.trained_unwrapped()
        return {
            "fingerprint": run_id,
            "step": done,
            "history": history,
            "unet": lora_state(unet),
            "text_encoder": lora_state(text_encoder) if text_encoder is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
        }

    def resume(self, state: dict | None) -> tuple[int, list[dict]]:
        """Load a checkpoint's adapters, optimiser and schedule: the number of steps done and
        the entries they logged."""
        if state is None:
            return 0, []
        unet, text_encoder = self.trained_unwrapped()
        set_peft_model_state_dict(unet, state["unet"])
        if text_encoder is not None:
            set_peft_model_state_dict(text_encoder, state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        return state["step"], state["history"]


def log_step(live, entry: dict, sync: bool = True) -> None:
    """One step's row of each curve (written at once). With `sync`, also dvclive's per-step
    work: metrics.json and the step signal that DVC's live views watch. dvclive re-reads every
    curve on each of those (to post to Studio, even with Studio off): at every step that was
    4 ms of a 60 ms step and grew with the step count, so the loop syncs about once a second."""
    live.step = entry["step"]
    live.log_metric("loss", entry["loss"])
    live.log_metric("lr", entry["lr"])
    if sync:
        live.next_step()
    else:
        live.step = entry["step"] + 1  # what next_step leaves


class Pacer:
    """True about once every `seconds`: when the live view is updated. It decides only when
    files that the run rewrites at its end are refreshed, never what they hold then."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


def run_metrics(history: list[dict], steps: int) -> dict:
    """The run's summary: final loss (mean of the last tenth of the steps). Nothing that depends
    on the machine's speed: metrics.json is an output whose md5 goes into dvc.lock."""
    tail = history[-max(1, len(history) // 10) :]
    return {"final_loss": float(np.mean([h["loss"] for h in tail])), "steps": steps}


def write_timing(cfg: TrainLoraParams, start_step: int, seconds: float, processes: int) -> None:
    """How long this run took and from which step it resumed, printed and kept in
    outputs/train_lora/timing.json: beside the outputs, never in them (it differs every run)."""
    steps_run = cfg.max_steps - start_step
    timing = {
        "seconds": round(seconds, 2),
        "images_per_second": round(
            steps_run * cfg.batch_size * cfg.gradient_accumulation / max(seconds, 1e-9), 2
        ),
        "resumed_from_step": start_step,
        "processes": processes,
    }
    log.info(
        "train_lora: %d steps in %.1f s (%.1f images/s, %d process%s)%s",
        steps_run,
        seconds,
        timing["images_per_second"],
        processes,
        "" if processes == 1 else "es",
        f", resumed from step {start_step}" if start_step else "",
    )
    atomic_write_json(paths.TRAIN_LORA_TIMING, timing)


def denoising_loss(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    generator: torch.Generator,
    cfg: TrainLoraParams,
    share: slice = slice(None),
) -> torch.Tensor:
    """The diffusion training loss of the `share` of a batch of clean latents (the caption
    embeddings `hidden` are that share's already).

    Noise and timesteps come from `generator` on the CPU, drawn for the whole batch, so the loss
    is the same on any device and with any number of processes sharing the batch.
    """
    device = next(unet.parameters()).device
    noise = torch.randn(latents.shape, generator=generator)
    count = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, count, (latents.shape[0],), generator=generator)
    latents, noise, timesteps = latents[share], noise[share], timesteps[share]
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    dtype = next(unet.parameters()).dtype
    prediction = unet(noisy.to(dtype), timesteps, hidden.to(device, dtype), return_dict=False)[0]
    return weighted_loss(prediction.float(), target.float(), timesteps, noise_scheduler, cfg)


def weighted_loss(prediction, target, timesteps, noise_scheduler, cfg: TrainLoraParams):
    """MSE, or Min-SNR-gamma weighted MSE (Hang et al. 2023) when train_lora.snr_gamma is set."""
    if cfg.snr_gamma is None:
        return F.mse_loss(prediction, target)
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=cfg.snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    else:
        weights = weights / snr
    loss = F.mse_loss(prediction, target, reduction="none").mean(dim=[1, 2, 3])
    return (loss * weights).mean()


def main() -> None:
    params = load_params("base", "train_lora")
    if launch.wanted(params.train_lora):
        sys.exit(launch.relaunch(params.train_lora, "stages.train_lora"))
    # the machine's threads shared among the processes on it (one launcher's processes)
    deterministic_torch(max(1, THREADS // launch.local_processes()))
    train(params.train_lora, params.base.seed)


if __name__ == "__main__":
    run_stage(main)
