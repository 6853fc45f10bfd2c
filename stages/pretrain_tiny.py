"""Make the shipped tiny base model, once, with the project's own code.

    python -m stages.pretrain_tiny        # about an hour on 2 CPU cores

Pretrains the tiny Stable Diffusion with the recipe in params.yaml (model.tiny, base.seed: the
same recipe that `model.base: tiny-scratch` runs in the pipeline), saves it in half precision to
stages/models/tiny_sd/pretrained, and measures how well it follows type prompts. The record
beside it, stages/models/tiny_sd/pretrained.json, holds the recipe, the code commit it was made
with, the sha256 of every file (set_up_diffusers refuses a folder that does not match) and the
figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from stages.common.cli import run_stage
from stages.common.determinism import THREADS, cpu_description, deterministic_torch
from stages.common.errors import StageError
from stages.common.params import load_params
from stages.models.prompt_following import make_judge, prompt_following
from stages.models.shipped import SHIPPED, SHIPPED_RECORD, file_hashes, save_half
from stages.models.tiny_model import CONFIGS, TINY_SIZE, pretrain

log = logging.getLogger(__name__)

JUDGED_SEEDS = list(range(16))  # images per type prompt in the prompt-following figure


def code_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, cwd=CONFIGS.parent
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "-s"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--record", type=Path, default=SHIPPED_RECORD)
    args = parser.parse_args()
    deterministic_torch()
    params = load_params("base", "model")
    recipe, seed = params.model.tiny, params.base.seed
    commit = code_commit()
    started = time.monotonic()
    pipe, stats = pretrain(recipe, seed)
    minutes = (time.monotonic() - started) / 60
    save_half(pipe, args.out)
    shipped = StableDiffusionPipeline.from_pretrained(args.out, torch_dtype=torch.float32)
    shipped.set_progress_bar_config(disable=True)
    judge, judge_accuracy = make_judge(TINY_SIZE, seed)
    following = prompt_following(shipped, judge, JUDGED_SEEDS)
    following["judge_held_out_accuracy"] = round(judge_accuracy, 4)
    record = {
        "recipe": {**recipe.model_dump(), "seed": seed, "size": TINY_SIZE, "threads": THREADS},
        "code": commit,
        "made_with": {"torch": torch.__version__, "cpu": cpu_description()},
        "pretraining": {**stats, "minutes": round(minutes, 1)},
        "prompt_following": following,
        "files": file_hashes(args.out),
    }
    if not record["files"]:
        raise StageError(f"nothing was saved in {args.out}")
    args.record.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("prompt following: %s", json.dumps(following))
    log.info("shipped model in %s, record in %s", args.out, args.record)


if __name__ == "__main__":
    run_stage(main)
