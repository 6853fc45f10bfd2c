"""The LoRA where people use it: beside the diffusers file, a kohya-format copy (the file that
AUTOMATIC1111, Forge, ComfyUI and the model hubs take) with kohya's `ss_*` metadata, and a model
card (README.md) in the form the Hugging Face hub shows for LoRAs, with sample images of this
run, so that the folder can be published as it is.

The key mapping is diffusers' own (`convert_state_dict_to_kohya`); two things are set after it:
SD 1.x's one text encoder is `lora_te_` in kohya's files (the converter writes SDXL's
`lora_te1_`), and each module's alpha is the trained one (the converter writes alpha = rank,
which scales the update by 1 whatever train_lora.alpha was). Nothing in these files depends on
the clock or the machine: they are DVC outputs, hashed into dvc.lock.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save as safetensors_bytes

from stages.common import paths
from stages.common.fsutil import atomic_write_bytes, stable_safetensors

SD1_TEXT_ENCODER = (
    "lora_te_"  # kohya's prefix for SD 1.x's text encoder (SDXL: lora_te1_, lora_te2_)
)
CARD_SEEDS = [0, 1, 2, 3]  # the model card's sample images: the trigger phrase at these seeds
CARD_STEPS = 20  # DPM-Solver++ steps of the sample images
CARD_GUIDANCE = 4.0


def kohya_state_dict(
    unet: dict[str, torch.Tensor], text_encoder: dict[str, torch.Tensor] | None, alpha: float
) -> dict[str, torch.Tensor]:
    """The PEFT state dicts of the UNet's (and text encoder's) LoRA in kohya's keys:
    `lora_unet_<module>.lora_down.weight`, `.lora_up.weight` and `.alpha` per module."""
    prefixed = {f"unet.{key}": value for key, value in unet.items()}
    prefixed |= {
        f"text_encoder.{clip_name(key)}": value for key, value in (text_encoder or {}).items()
    }
    converted = convert_state_dict_to_kohya(prefixed)
    kohya = {}
    for key, tensor in converted.items():
        if key.startswith("lora_te1_"):
            key = SD1_TEXT_ENCODER + key.removeprefix("lora_te1_")
        if key.endswith(".alpha"):
            tensor = torch.tensor(float(alpha))
        kohya[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    return kohya


def clip_name(key: str) -> str:
    """A text encoder module's name as SD 1.x checkpoints name it: transformers 5 dropped
    CLIPTextModel's `text_model.` level (`encoder.layers.0...`), and AUTOMATIC1111 and ComfyUI
    map kohya's `lora_te_text_model_encoder_layers_...` only."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def trigger_phrase(captions: list[str]) -> str:
    """What a prompt must hold to call the LoRA: the captions' one text, or the words they all
    start with ("a pkmnlora pokemon" of "a pkmnlora pokemon named Psyduck", ...)."""
    if len(set(captions)) == 1:
        return captions[0]
    words = []
    for column in zip(*(caption.split() for caption in captions), strict=False):
        if len(set(column)) > 1:
            break
        words.append(column[0])
    return " ".join(words)


def base_model_fields(record: dict[str, Any]) -> dict[str, str]:
    """The base model as kohya's metadata names it, with what pins it: a hub model's resolved
    commit, else set_up_diffusers' fingerprint of its folder (see base_model_pin)."""
    if record["kind"] == "hub":
        return {"ss_sd_model_name": record["id"], "ss_sd_model_commit": record["commit"]}
    name = {"tiny": "pokemon-lora tiny (shipped)", "tiny-scratch": "pokemon-lora tiny (scratch)"}
    return {
        "ss_sd_model_name": name.get(record["kind"], Path(record.get("path", "")).name),
        "ss_sd_model_fingerprint": str(record.get("fingerprint", "")),
    }


def base_model_pin(record: dict[str, Any]) -> str:
    """What pins the base model, in words for the card."""
    if record["kind"] == "hub":
        return f"commit `{record['commit']}`"
    what = (
        "its files' names, sizes and modification times"
        if record["kind"] == "local"
        else "its files' names and content"
    )
    return (
        f"fingerprint `{record.get('fingerprint')}`: the first 16 hex digits of a sha256 of {what}"
    )


def kohya_metadata(
    train: dict[str, Any],
    seed: int,
    record: dict[str, Any],
    captions: list[str],
    resolution: int,
    dataset_digest: str,
) -> dict[str, str]:
    """kohya's `ss_*` training metadata (strings, as safetensors headers hold them) and the
    Stability AI model spec keys that A1111 and ComfyUI read."""
    trigger = trigger_phrase(captions)
    text_lr = train["learning_rate"] if train["train_text_encoder"] else 0
    fields = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": train["rank"],
        "ss_network_alpha": train["alpha"],
        "ss_network_dropout": train["dropout"],
        "ss_network_args": json.dumps({"target_modules": list(train["target_modules"])}),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": train["max_steps"],
        "ss_steps": train["max_steps"],
        "ss_learning_rate": train["learning_rate"],
        "ss_unet_lr": train["learning_rate"],
        "ss_text_encoder_lr": text_lr,
        "ss_network_train_unet_only": str(not train["train_text_encoder"]),
        "ss_lr_scheduler": train["lr_scheduler"],
        "ss_lr_warmup_steps": train["lr_warmup_steps"],
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)",
        "ss_batch_size_per_device": train["batch_size"],
        "ss_gradient_accumulation_steps": train["gradient_accumulation"],
        "ss_mixed_precision": train["mixed_precision"],
        "ss_min_snr_gamma": train["snr_gamma"],
        "ss_flip_aug": str(train["random_flip"]),
        "ss_seed": seed,
        "ss_num_train_images": len(captions),
        "ss_dataset_sha256": dataset_digest,
        "ss_tag_frequency": json.dumps({"lora_dataset": dict(sorted(Counter(captions).items()))}),
        "ss_training_comment": f"trigger phrase: {trigger}; trained by the pokemon-lora "
        "pipeline's train_lora stage (dvc repro)",
        "ss_output_name": Path(paths.LORA_KOHYA).stem,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": f"pokemon-lora ({trigger})",
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.trigger_phrase": trigger,
        **base_model_fields(record),
    }
    return {key: "None" if value is None else str(value) for key, value in fields.items()}


def save_kohya(folder: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path = Path(folder) / paths.LORA_KOHYA
    atomic_write_bytes(path, stable_safetensors(safetensors_bytes(tensors, metadata=metadata)))
    return path


def model_card(metadata: dict[str, str], record: dict[str, Any], samples: list[str]) -> str:
    """README.md of the LoRA folder, as the Hugging Face hub shows a LoRA: front matter (base
    model, trigger, the sample images as its widget), then how to use it and how it was made."""
    trigger = metadata["modelspec.trigger_phrase"]
    name = Path(paths.LORA_KOHYA).stem
    hub = record["kind"] == "hub"
    base = record["id"] if hub else metadata["ss_sd_model_name"]
    front = {
        **({"base_model": record["id"]} if hub else {}),
        "library_name": "diffusers",
        "instance_prompt": trigger,
        "tags": ["text-to-image", "stable-diffusion", "lora", "diffusers", "pokemon"],
        "widget": [{"text": trigger, "output": {"url": sample}} for sample in samples],
    }
    pins = base_model_pin(record)
    rows = [
        ("base model", f"{base} ({pins})"),
        ("trigger phrase", f"`{trigger}`"),
        ("rank / alpha", f"{metadata['ss_network_dim']} / {metadata['ss_network_alpha']}"),
        ("target modules", ", ".join(json.loads(metadata["ss_network_args"])["target_modules"])),
        ("text encoder trained", str(metadata["ss_network_train_unet_only"] == "False")),
        ("steps", metadata["ss_max_train_steps"]),
        ("learning rate", f"{metadata['ss_learning_rate']} ({metadata['ss_lr_scheduler']})"),
        ("batch size", metadata["ss_batch_size_per_device"]),
        ("resolution", metadata["modelspec.resolution"]),
        ("training images", metadata["ss_num_train_images"]),
        ("dataset sha256", f"`{metadata['ss_dataset_sha256']}`"),
        ("seed", metadata["ss_seed"]),
    ]
    images = "\n".join(
        f"![{trigger}, seed {seed}]({sample})"
        for seed, sample in zip(CARD_SEEDS, samples, strict=True)
    )
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---

# {metadata["modelspec.title"]}

A LoRA for Stable Diffusion 1.x, trained on {base}. Put **`{trigger}`** in the prompt.

{images}

*The trigger phrase at seeds {", ".join(map(str, CARD_SEEDS))}, DPM-Solver++ {CARD_STEPS} steps,
guidance {CARD_GUIDANCE}, drawn by the training run itself.*

## Files

- `{paths.LORA_WEIGHTS}`: the diffusers/PEFT format, for `load_lora_weights`.
- `{paths.LORA_KOHYA}`: the same LoRA in kohya's format with its training metadata (`ss_*`),
  for AUTOMATIC1111, Forge, ComfyUI and the model hubs.
- `params.json`: every parameter of the run.

## Use it with diffusers

```python
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{base if hub else "path/to/the/base/model"}")
pipe.load_lora_weights("path/to/this/folder", weight_name="{paths.LORA_WEIGHTS}")
image = pipe("{trigger}", cross_attention_kwargs={{"scale": 1.0}}).images[0]
```

## Use it in AUTOMATIC1111, Forge or ComfyUI

Copy `{paths.LORA_KOHYA}` into `models/Lora/` (ComfyUI: `models/loras/`).
AUTOMATIC1111 and Forge: write `<lora:{name}:1> {trigger}` in the prompt. ComfyUI: a
*Load LoRA* node between the checkpoint loader and the sampler, with `{paths.LORA_KOHYA}`,
strength 1, and the prompt `{trigger}`. The base checkpoint must be the one it was trained on
(or a Stable Diffusion 1.x model close to it).

## Training

| | |
|---|---|
{table}

Made by the `train_lora` stage of the pokemon-lora DVC pipeline: `dvc repro` with the same
code, params and data gives these files bit for bit.
"""
