"""Stage resize_pokemon_images: square RGB training images and their captions.

Every raw image becomes a resize.size PNG on resize.background (transparency composited, aspect
kept by padding, first frame of animations, format read from the bytes) in data/processed/images,
with a metadata.jsonl in the diffusers imagefolder form. The Pokémon of base.pokemon_type also go
to data/processed/lora_dataset: the LoRA's training set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.common.params import load_params
from stages.data.images import BadImageError, png_bytes, read_image, to_square
from stages.data.pokemon import in_training_type
from stages.data.stats import read_stats

log = logging.getLogger(__name__)


def caption(template: str, row: pd.Series) -> str:
    """The caption of one image, with blanks of a missing type2 squeezed out."""
    type2 = "" if pd.isna(row["type2"]) else str(row["type2"])
    text = template.format(id=row["id"], name=row["name"], type1=row["type1"], type2=type2)
    return " ".join(text.split())


def raw_images_by_id(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise StageError(f"{folder} not found; run `dvc repro scrape_pokemon_images` first")
    return {int(p.stem): p for p in folder.iterdir() if p.stem.isdigit()}


def write_metadata(folder: Path, rows: list[dict]) -> None:
    lines = (json.dumps(row, ensure_ascii=False) for row in rows)
    (folder / paths.METADATA).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def main() -> None:
    params = load_params("base", "resize")
    settings, pokemon_type = params.resize, params.base.pokemon_type
    stats = read_stats()
    raw = raw_images_by_id(paths.RAW_IMAGES)
    everything, training, skipped = [], [], []
    with atomic_dir(paths.IMAGES) as all_dir, atomic_dir(paths.LORA_DATASET) as lora_dir:
        for _, row in tqdm(stats.iterrows(), total=len(stats), desc="resize", unit="img"):
            source = raw.get(int(row["id"]))
            try:
                if source is None:
                    raise BadImageError(f"no raw image (see {paths.SCRAPE_REPORT})")
                image = to_square(read_image(source), settings.size, settings.background)
            except BadImageError as error:
                skipped.append({"id": int(row["id"]), "name": row["name"], "reason": str(error)})
                continue
            name = f"{int(row['id']):04d}.png"
            content = png_bytes(image)
            (all_dir / name).write_bytes(content)
            entry = {
                "file_name": name,
                "text": caption(settings.caption_template, row),
                "id": int(row["id"]),
                "name": row["name"],
                "type1": row["type1"],
                "type2": None if pd.isna(row["type2"]) else row["type2"],
            }
            everything.append(entry)
            if in_training_type(row["type1"], pokemon_type):
                (lora_dir / name).write_bytes(content)
                training.append(entry)
        if not training:
            present = sorted({e["type1"] for e in everything})
            raise StageError(
                f"base.pokemon_type {pokemon_type}: no image of that type among "
                f"{len(everything)}; types present: {', '.join(present) or 'none'}"
            )
        write_metadata(all_dir, everything)
        write_metadata(lora_dir, training)
    atomic_write_json(
        paths.RESIZE_REPORT,
        {
            "pokemon_type": pokemon_type,
            "size": settings.size,
            "images": len(everything),
            "training_images": len(training),
            "skipped": skipped,
        },
    )
    log.info(
        "%d images (%d of type %s for the LoRA), %d skipped -> %s",
        len(everything),
        len(training),
        pokemon_type,
        len(skipped),
        paths.PROCESSED,
    )


if __name__ == "__main__":
    run_stage(main)
