"""The generation worker's torch side: the base model loaded once through the stages' own loader,
the experiments' LoRAs loaded into it as named adapters (at most ADAPTERS at a time), and the
drawing of one request, column by column, from the same initial noise per seed.

Only the worker imports this module (it imports torch and diffusers); the page's kernel never
does. The drawing is the stage's: stages.generate_text_to_image.initial_noise for the latents,
the prompt batched `batch_size` images per pipeline call, the LoRA's strength as
cross_attention_kwargs={"scale": ...}; so a playground column of an experiment at its
generate.lora_scale draws what that experiment's generate_text_to_image stage drew.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from dashboard.playground.protocol import (
    WORKSPACE,
    BadRequest,
    BaseColumn,
    BlendColumn,
    Column,
    DrawRequest,
    LoraColumn,
)
from stages.common import paths
from stages.common.determinism import deterministic_torch
from stages.common.params import load_params
from stages.generate_text_to_image import initial_noise
from stages.models.diffusion import (
    SCHEDULER_CLASSES,
    load_pipeline,
    pick_device,
    pick_dtype,
    read_model_record,
)

log = logging.getLogger(__name__)
ADAPTERS = 8  # LoRAs kept loaded; the least recently used one is deleted for a ninth
LORA_FILE = (paths.LORA / paths.LORA_WEIGHTS).as_posix()

Emit = Callable[[dict[str, Any]], None]


class LoraUnavailable(Exception):
    """A column's LoRA cannot be loaded; the message names the column, the rev and the file
    and says how to fix it. Fails that column only."""


class DrawCancelled(Exception):
    """Raised from the denoising loop's step callback when the draw was cancelled."""


def describe_base(record: dict[str, Any]) -> str:
    """The base model in a few words, for the ready event."""
    kind = record.get("kind")
    if kind == "hub":
        return f"{record['id']}@{str(record.get('commit', '?'))[:12]}"
    if kind == "tiny":
        return f"the shipped tiny model ({record['path']})"
    if kind == "tiny-scratch":
        return f"a tiny model pretrained here ({record['path']})"
    return f"the local model {record.get('path')}"


def resolved_record(record: dict[str, Any], repo: Path) -> dict[str, Any]:
    """The record with its path absolute: set_up_diffusers writes it relative to the repo."""
    if record.get("kind") != "hub" and not Path(record["path"]).is_absolute():
        return {**record, "path": str(repo / record["path"])}
    return record


def png_base64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Where a rev's LoRA file comes from.


@dataclass(frozen=True)
class LoraFile:
    key: str  # the adapter's name: the same file is loaded once
    data: bytes


class LoraFiles:
    """A rev's pytorch_lora_weights.safetensors: the workspace's from disk (read again when its
    content changed), an experiment's as committed there, through DVC's own API."""

    def __init__(self, repo: Path):
        self.repo = repo
        self._workspace_stat: tuple[int, int, int] | None = None
        self._workspace_key: str | None = None

    def workspace_key(self, label: str) -> str:
        """The adapter name of the workspace's LoRA now (its content's hash, cached by the
        file's inode, size and modification time)."""
        path = self.repo / LORA_FILE
        try:
            info = path.stat()
        except FileNotFoundError:
            raise LoraUnavailable(
                f"column {label!r}: the workspace has no LoRA ({LORA_FILE} is missing): run "
                "`dvc repro` (or `dvc exp apply` an experiment), or pick an experiment"
            ) from None
        stat_key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stat_key != self._workspace_stat:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            self._workspace_stat, self._workspace_key = stat_key, f"workspace_{digest[:16]}"
        assert self._workspace_key is not None
        return self._workspace_key

    def key(self, rev: str, label: str) -> str:
        return self.workspace_key(label) if rev == WORKSPACE else f"rev_{rev[:16]}"

    def read(self, rev: str, label: str) -> bytes:
        if rev == WORKSPACE:
            return (self.repo / LORA_FILE).read_bytes()
        return self.read_committed(rev, label)

    def read_committed(self, rev: str, label: str) -> bytes:
        """The file as committed in `rev`, read with dvc.api.open (DVC finds it in the cache,
        or says it is not there). dvc is imported on the first LoRA, not at start."""
        import dvc.api
        from dvc.exceptions import DvcException
        from dvc.scm import RevError
        from dvc_data.index import DataIndexError

        where = f"column {label!r}: the LoRA {LORA_FILE} of experiment {rev[:12]}"
        try:
            with dvc.api.open(LORA_FILE, repo=str(self.repo), rev=rev, mode="rb") as handle:
                return handle.read()
        except RevError:
            raise LoraUnavailable(
                f"{where} cannot be read: no commit {rev} in this repository (the experiment "
                "was removed?); refresh the table and pick it again"
            ) from None
        except (DvcException, DataIndexError, OSError) as error:
            raise LoraUnavailable(
                f"{where} is not in this repository's DVC cache ({error}); fetch it with "
                "`dvc exp pull <remote> <experiment>` (or `dvc pull`), or run the experiment "
                "again"
            ) from None


# ---------------------------------------------------------------------------------------------
# The loaded adapters.


class Adapters:
    """LoRAs loaded into one pipeline as named adapters, the least recently used deleted when a
    new one would make more than `capacity`. Switching LoRAs never reloads the base."""

    def __init__(self, pipe: Any, files: LoraFiles, capacity: int = ADAPTERS):
        self.pipe = pipe
        self.files = files
        self.capacity = capacity
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> rev, oldest first

    def use(self, column: Column) -> float:
        """Make the pipeline draw `column`; returns the cross-attention scale to draw with."""
        if isinstance(column, BaseColumn):
            if self.loaded:
                self.pipe.disable_lora()
            return 1.0
        if isinstance(column, LoraColumn):
            parts = [(column.rev, 1.0)]
            scale = column.scale
        elif isinstance(column, BlendColumn):
            parts = [(part.rev, part.weight) for part in column.parts]
            scale = 1.0
        else:  # pragma: no cover - the protocol has three kinds
            raise TypeError(column)
        names: list[str] = []
        for rev, _ in parts:
            names.append(self.ensure(rev, column.label, keep=set(names)))
        self.pipe.enable_lora()
        self.pipe.set_adapters(names, adapter_weights=[weight for _, weight in parts])
        return scale

    def ensure(self, rev: str, label: str, keep: set[str]) -> str:
        """The adapter name of `rev`'s LoRA, loaded if it is not (evicting one not in `keep`)."""
        name = self.files.key(rev, label)
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return name
        started = time.perf_counter()
        data = self.files.read(rev, label)
        if rev == WORKSPACE:  # the workspace's previous LoRA is gone from disk: drop it now
            self.evict([n for n, r in self.loaded.items() if r == WORKSPACE and n not in keep])
        while len(self.loaded) >= self.capacity:
            oldest = next((n for n in self.loaded if n not in keep), None)
            if oldest is None:
                break
            self.evict([oldest])
        self.load(name, data, rev, label)
        self.loaded[name] = rev
        log.info("LoRA %s of %s loaded in %.2f s", name, rev, time.perf_counter() - started)
        return name

    def load(self, name: str, data: bytes, rev: str, label: str) -> None:
        where = f"column {label!r}: the LoRA {LORA_FILE} of {rev[:12]}"
        try:
            state = load_safetensors(data)
            self.pipe.load_lora_weights(state, adapter_name=name)
        except (SafetensorError, ValueError, KeyError, RuntimeError) as error:
            self.forget(name)
            raise LoraUnavailable(
                f"{where} cannot be loaded into this base model ({str(error)[:300]}): is it a "
                "LoRA of another base model? Re-run the experiment's train_lora stage"
            ) from None
        present = {n for names in self.pipe.get_list_adapters().values() for n in names}
        if name not in present:
            raise LoraUnavailable(
                f"{where} holds no LoRA layer for this base model's UNet or text encoder (a "
                "LoRA of another base model?); re-run the experiment's train_lora stage"
            )

    def forget(self, name: str) -> None:
        """Delete what a failed load may have left behind."""
        present = {n for names in self.pipe.get_list_adapters().values() for n in names}
        if name in present:
            self.pipe.delete_adapters([name])

    def evict(self, names: list[str]) -> None:
        if names:
            self.pipe.delete_adapters(names)
            for name in names:
                del self.loaded[name]
            log.info("LoRA adapters deleted: %s", ", ".join(names))


# ---------------------------------------------------------------------------------------------
# The engine.


class Engine:
    """The base model, its adapters and the one way to draw a request with them. Not thread
    safe: the worker calls draw() from its one generation thread."""

    def __init__(self, repo: Path):
        started = time.perf_counter()
        # the stages' threads and kernels: a column draws, bit for bit, what the experiment's
        # generate_text_to_image drew (and what "Keep as experiment" will draw)
        deterministic_torch()
        self.repo = repo
        self.record = read_model_record(repo / paths.BASE_MODEL_RECORD)
        self.device = pick_device()
        self.dtype = pick_dtype(
            load_params("model", path=repo / paths.PARAMS).model.dtype, self.device
        )
        self.pipe = load_pipeline(
            record=resolved_record(self.record, repo), device=self.device, dtype=self.dtype
        )
        self.schedulers = {"default": self.pipe.scheduler}
        self.adapters = Adapters(self.pipe, LoraFiles(repo))
        self.default_size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        return {
            "base": describe_base(self.record),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "size": self.default_size,
            "pid": os.getpid(),
        }

    def check(self, request: DrawRequest) -> None:
        """What depends on this model: the size must be a whole number of latent pixels."""
        factor = self.pipe.vae_scale_factor
        if request.size is not None and request.size % factor:
            raise BadRequest(f"size = {request.size} is not allowed: a multiple of {factor} px")

    def use_scheduler(self, name: str) -> None:
        if name not in self.schedulers:
            config = self.schedulers["default"].config
            self.schedulers[name] = SCHEDULER_CLASSES[name].from_config(config)
        self.pipe.scheduler = self.schedulers[name]

    def draw(self, request: DrawRequest, cancelled: threading.Event, emit: Emit) -> None:
        """Every column of `request` for every seed; each batch's images emitted as soon as
        they are drawn. Raises DrawCancelled, checked at every denoising step."""
        self.use_scheduler(request.scheduler)
        side = request.size or self.default_size
        noise = {seed: initial_noise(self.pipe, seed, side, side) for seed in request.seeds}
        for index, column in enumerate(request.columns):
            if cancelled.is_set():
                raise DrawCancelled
            try:
                scale = self.adapters.use(column)
            except LoraUnavailable as error:
                log.warning("%s", error)
                emit({"type": "column_failed", "column": index, "message": str(error)})
                continue
            try:
                for seeds, images in self.batches(request, noise, side, scale, cancelled):
                    for seed, image in zip(seeds, images, strict=True):
                        emit(
                            {
                                "type": "image",
                                "column": index,
                                "seed": seed,
                                "png": png_base64(image),
                            }
                        )
            except (RuntimeError, ValueError) as error:
                log.exception("column %s failed", column.label)
                emit(
                    {
                        "type": "column_failed",
                        "column": index,
                        "message": f"column {column.label!r} could not be drawn: {error}",
                    }
                )

    def batches(
        self,
        request: DrawRequest,
        noise: dict[int, torch.Tensor],
        side: int,
        scale: float,
        cancelled: threading.Event,
    ) -> Iterator[tuple[list[int], list[Any]]]:
        """The stage's batching: `batch_size` seeds per pipeline call."""

        def stop_if_cancelled(_pipe: Any, _step: int, _t: Any, kwargs: dict) -> dict:
            if cancelled.is_set():
                raise DrawCancelled
            return kwargs

        seeds = list(request.seeds)
        for start in range(0, len(seeds), request.batch_size):
            batch = seeds[start : start + request.batch_size]
            latents = torch.cat([noise[seed] for seed in batch])
            negative = [request.negative_prompt] * len(batch) if request.negative_prompt else None
            with torch.inference_mode():
                result = self.pipe(
                    [request.prompt] * len(batch),
                    negative_prompt=negative,
                    latents=latents.to(self.pipe.device, self.pipe.unet.dtype),
                    num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale,
                    cross_attention_kwargs={"scale": scale},
                    height=side,
                    width=side,
                    callback_on_step_end=stop_if_cancelled,
                )
            yield batch, result.images
