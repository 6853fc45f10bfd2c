"""The shipped tiny base model: where it lies in the repository, the sha256 of its files, and
the check that set_up_diffusers makes before it copies it into place.

stages/models/tiny_sd/pretrained is a diffusers folder with float16 weights (a few MB), made
once by `python -m stages.pretrain_tiny`; stages/models/tiny_sd/pretrained.json is its record:
the recipe, the code commit, the figures and every file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stages.common.errors import StageError
from stages.models.tiny_model import CONFIGS

SHIPPED = CONFIGS / "pretrained"  # the shipped diffusers folder, weights in float16
SHIPPED_RECORD = CONFIGS / "pretrained.json"


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder`, by path relative to it, in sorted order."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    }


def verify(folder: Path, expected: dict[str, str]) -> None:
    """Raise a StageError naming every file of `folder` that differs from `expected`."""
    found = file_hashes(folder) if folder.is_dir() else {}
    wrong = sorted(
        f"{name} ({'missing' if name not in found else 'sha256 ' + found[name][:12]}, "
        f"expected {digest[:12]})"
        for name, digest in expected.items()
        if found.get(name) != digest
    )
    extra = sorted(set(found) - set(expected))
    if wrong or extra:
        raise StageError(
            f"the shipped tiny base model in {folder} is not the one its record describes: "
            + "; ".join(wrong + [f"{name} (not in the record)" for name in extra])
            + f". Restore it with `git checkout -- {folder}` or make it anew with "
            "`python -m stages.pretrain_tiny`"
        )


def save_half(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """Save in float16: half the size, and the model samples the same (the figures in the
    record are measured on the reloaded float16 weights)."""
    if folder.exists():
        shutil.rmtree(folder)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)


def upcast_copy(source: Path, target: Path) -> None:
    """Copy a float16 pipeline folder with its tensors in float32 (exactly: every float16 is a
    float32) and its configs saying so, every other byte as it is; the copy then loads in
    float32 with or without a torch_dtype, on any device. Nothing in it names `source`, so it is
    the same file for file on every machine."""
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata()
            tensors = {
                name: tensor.float() if tensor.dtype == torch.float16 else tensor
                for name, tensor in load_file(path).items()
            }
            save_file(tensors, out, metadata=metadata)
        elif path.name == "config.json" and "float16" in path.read_text(encoding="utf-8"):
            config = json.loads(path.read_text(encoding="utf-8"))
            for key in ("dtype", "torch_dtype"):
                if config.get(key) == "float16":
                    config[key] = "float32"
            out.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(path, out)
