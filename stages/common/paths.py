"""Every path the pipeline reads or writes, in one place (relative to the repository root)."""

from __future__ import annotations

import os
from pathlib import Path

PARAMS = Path("params.yaml")

DATA = Path("data")
EXTERNAL = DATA / "external"  # raw inputs as they arrived: never edited by a later stage
PROCESSED = DATA / "processed"

# download_pokemon_stats
STATS_RAW = EXTERNAL / "pokemon_stats.csv"  # the CSV byte for byte (or the synthetic one)
STATS = PROCESSED / "pokemon.csv"  # normalised: id, name, type1, type2, generation, ...
STATS_REPORT = PROCESSED / "stats_report.json"

# scrape_pokemon_images
RAW_IMAGES = EXTERNAL / "images"  # one file per Pokémon id, format as served
SCRAPE_REPORT = EXTERNAL / "scrape_report.json"

# resize_pokemon_images
IMAGES = PROCESSED / "images"  # every Pokémon, square RGB PNGs + metadata.jsonl
LORA_DATASET = PROCESSED / "lora_dataset"  # base.pokemon_type only, diffusers imagefolder
RESIZE_REPORT = PROCESSED / "resize_report.json"
METADATA = "metadata.jsonl"

OUTPUTS = Path("outputs")
# check_params: a constant file every stage depends on (stages.params --stamp)
PARAMS_STAMP = OUTPUTS / "params_checked.txt"

# set_up_diffusers
BASE_MODEL = OUTPUTS / "base_model"
BASE_MODEL_RECORD = BASE_MODEL / "model.json"  # where the base is: tiny folder, hub commit, path
TINY_PIPELINE = BASE_MODEL / "pipeline"  # the tiny model's diffusers folder
BASE_SAMPLES = BASE_MODEL / "samples.png"  # one creature per type prompt, to see what it learnt

# train_lora
LORA = OUTPUTS / "lora"  # the LoRA (two formats), its model card and samples, the params
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers/PEFT format (load_lora_weights)
LORA_KOHYA = "pokemon_lora.safetensors"  # the same LoRA in kohya's format (A1111, ComfyUI, hubs)
LORA_CARD = "README.md"  # the model card, as the Hugging Face hub shows it
LORA_SAMPLES = "images"  # the card's sample images: sample-<seed>.png
TRAIN_LORA = OUTPUTS / "train_lora"  # dvclive: metrics.json, plots/metrics/loss.tsv
TRAIN_LORA_TIMING = TRAIN_LORA / "timing.json"  # seconds and images/s: not an output (git-ignored)

# generate_text_to_image
GENERATED = OUTPUTS / "generated"  # base/<prompt-slug>/seed-<n>.png, lora/..., grid.png

# train_classifier
CLASSIFIER = OUTPUTS / "classifier"  # model.safetensors + config.json (params, held-out files)
TRAIN_CLASSIFIER = OUTPUTS / "train_classifier"  # dvclive: metrics.json, history, confusion

# evaluate
EVALUATION = OUTPUTS / "evaluate"  # metrics.json, predictions.csv

# report
REPORT = OUTPUTS / "report"  # the executed notebook and its HTML export


def user_cache_dir() -> Path:
    return Path(os.environ.get("POKEMON_LORA_CACHE") or Path.home() / ".cache" / "pokemon-lora")


def download_cache_dir() -> Path:
    """Where downloaded files are kept between runs, so an interrupted download resumes.

    Outside the DVC outputs on purpose: DVC deletes a stage's outputs before it runs it, and
    queued experiments run in temporary copies of the repository.
    """
    return user_cache_dir() / "downloads"
