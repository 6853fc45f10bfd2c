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


def download_cache_dir() -> Path:
    """Where downloaded files are kept between runs, so an interrupted download resumes.

    Outside the DVC outputs on purpose: DVC deletes a stage's outputs before it runs it, and
    queued experiments run in temporary copies of the repository.
    """
    root = os.environ.get("POKEMON_LORA_CACHE") or Path.home() / ".cache" / "pokemon-lora"
    return Path(root) / "downloads"
