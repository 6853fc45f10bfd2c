"""The pieces of LoRA training that are not the loop: the dataset, its cached latents and
text embeddings, the resumable checkpoint, the diffusers-format save.

Nothing read back from the cache is unpickled (anyone who shares the cache folder can write
there): tensors are safetensors, everything else is JSON in the safetensors header, and a
checkpoint's fingerprint is read from that header and checked before any tensor is loaded.
"""

from __future__ import annotations

import hashlib
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from stages.common import paths
from stages.common.errors import StageError
from stages.common.fsutil import atomic_write_bytes, stable_safetensors
from stages.models.diffusion import tokenize
from stages.models.tensors import to_unit_range

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
        try:
            with safe_open(cache_file, framework="pt", device="cpu") as cached:
                header = cached.metadata() or {}
                if header.get("format") != LATENTS_FORMAT:
                    raise KeyError(f"not a {LATENTS_FORMAT} file")
                channels_last = json.loads(header["channels_last"])
                tensors = {name: cached.get_tensor(name) for name in cached.keys()}  # noqa: SIM118 (a safe_open, not a dict)
            # The VAE's posteriors come out channels-last, and the loop's float sums depend
            # on the layout: the cache gives back the layout, as torch.save did, so that a run
            # on cached latents is bit for bit the run that encoded them.
            for name in channels_last:
                tensors[name] = tensors[name].contiguous(memory_format=CHANNELS_LAST)
            log.info("latents and text embeddings from the cache %s", cache_file)
            return Encoded(
                tensors["mean"], tensors["std"], tensors.get("hidden"), tensors["input_ids"]
            )
        except (OSError, SafetensorError, KeyError) as error:
            log.warning("ignoring an unreadable latents cache %s (%s)", cache_file, error)
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
    tensors = {k: v for k, v in encoded.__dict__.items() if v is not None}
    channels_last = [
        k
        for k, v in tensors.items()
        if v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=CHANNELS_LAST)
    ]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    header = {"format": LATENTS_FORMAT, "channels_last": json.dumps(channels_last)}
    atomic_write_bytes(cache_file, safetensors_bytes(tensors, metadata=header))
    return encoded


CHANNELS_LAST = torch.channels_last
# A cache file without this format (one written before the layout was kept) is encoded anew.
LATENTS_FORMAT = "pokemon-lora-latents/2"
CHECKPOINT_FORMAT = "pokemon-lora-checkpoint/1"


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], where: str = "") -> Any:
    """`value` as JSON, each tensor in it moved to `tensors` under its path and replaced by
    {"__tensor__": path}. Tuples and dicts with keys other than strings (an optimiser's state
    is keyed by parameter index) are tagged, so that join_tensors gives back the same types."""
    if isinstance(value, torch.Tensor):
        if where in tensors:
            raise ValueError(f"checkpoint: two tensors at {where}")
        tensors[where] = value.detach().cpu().contiguous()
        return {"__tensor__": where}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {
            "__tuple__": [split_tensors(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
        }
    if isinstance(value, list):
        return [split_tensors(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        items = [[k, split_tensors(v, tensors, f"{where}/{k}")] for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return dict(items)
        if not all(isinstance(k, str | int) for k in value):
            raise TypeError(f"checkpoint: keys of {where or 'the state'} are not str or int")
        return {"__items__": items}
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__} at {where or 'the top'}")


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of split_tensors."""
    if isinstance(value, list):
        return [join_tensors(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {"__tensor__"}:
        return tensors[value["__tensor__"]]
    if value.keys() == {"__tuple__"}:
        return tuple(join_tensors(v, tensors) for v in value["__tuple__"])
    if value.keys() == {"__items__"}:
        return {k: join_tensors(v, tensors) for k, v in value["__items__"]}
    return {k: join_tensors(v, tensors) for k, v in value.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint in one rename: a run killed while saving keeps the previous one.

    One safetensors file: the tensors (LoRA weights, optimiser moments), and in its header the
    fingerprint and the rest of the state as JSON. Nothing in it is ever unpickled.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    header = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": str(state["fingerprint"]),
        "state": json.dumps(skeleton),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))


def load_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this run (same fingerprint), else None.

    The fingerprint is read from the header alone; no tensor is loaded for a checkpoint of
    another run, and a file that is not one of our checkpoints (a pickle, say) is only reported.
    """
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as checkpoint:
            header = checkpoint.metadata() or {}
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
            if header.get("fingerprint") != expected:
                log.info("the checkpoint in %s is from other params or data: starting over", path)
                return None
            names = checkpoint.keys()
            tensors = {name: checkpoint.get_tensor(name) for name in names}
        state = join_tensors(json.loads(header["state"]), tensors)
        if state.get("fingerprint") != expected:
            raise ValueError("its state does not match its header")
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("ignoring an unreadable checkpoint %s (%s): starting over", path, error)
        return None
    return state


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model)


def save_lora(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
    """pytorch_lora_weights.safetensors in the diffusers format (pipe.load_lora_weights), with
    each adapter's LoRA config in its header: without it a loader takes alpha = rank, and a LoRA
    trained with another alpha would load at the wrong strength."""
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(lora_state(unet)),
        text_encoder_lora_layers=(
            convert_state_dict_to_diffusers(lora_state(text_encoder)) if text_encoder else None
        ),
        unet_lora_adapter_metadata=adapter_config(unet),
        text_encoder_lora_adapter_metadata=adapter_config(text_encoder) if text_encoder else None,
        safe_serialization=True,
    )
    weights = Path(folder) / paths.LORA_WEIGHTS  # its header in a fixed order: see fsutil
    atomic_write_bytes(weights, stable_safetensors(weights.read_bytes()))


def adapter_config(model: torch.nn.Module) -> dict[str, Any]:
    """The adapter's LoraConfig as the file keeps it, its sets (target_modules) sorted: diffusers
    lists a set in its iteration order, which changes with each process's hash seed, and the
    file would differ from run to run."""
    config = model.peft_config["default"].to_dict()
    return {key: sorted(v) if isinstance(v, set | frozenset) else v for key, v in config.items()}
