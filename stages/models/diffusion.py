"""One way to load the base model (+ a LoRA) for every stage that runs it (train_lora,
generate_text_to_image), so that the tiny model and Stable Diffusion 1.5 take exactly the same
code path. The dashboard never loads a model: its page's kernel must not import torch (a test
checks it).

set_up_diffusers writes outputs/base_model/model.json, a record of where the base model is:
the tiny pipeline folder, a hub id with its resolved commit (weights stay in the hub cache), or
a local folder. load_pipeline() reads that record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)

from stages.common import paths
from stages.common.errors import StageError

log = logging.getLogger(__name__)

SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def read_model_record(path: Path = paths.BASE_MODEL_RECORD) -> dict[str, Any]:
    if not Path(path).is_file():
        raise StageError(f"{path} not found; run `dvc repro set_up_diffusers` first")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pretrained_source(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What to pass to from_pretrained for a model record: a folder, or a hub id + revision
    read from the local hub cache only (set_up_diffusers downloaded it)."""
    if record["kind"] == "hub":
        return record["id"], {"revision": record["commit"], "local_files_only": True}
    return record["path"], {}


def load_pipeline(
    lora_dir: Path | None = None,
    *,
    record: dict[str, Any] | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    scheduler: str | None = None,
) -> StableDiffusionPipeline:
    """The base pipeline (with the LoRA in `lora_dir` loaded, if given) on `device`."""
    record = record or read_model_record()
    source, options = pretrained_source(record)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source,
            torch_dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            **options,
        )
    except (OSError, ValueError) as error:
        raise StageError(
            f"cannot load the base model {source}: {error}; re-run `dvc repro set_up_diffusers`"
        ) from None
    if scheduler is not None:
        pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), weight_name=paths.LORA_WEIGHTS)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or pick_device())


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
