"""Stage scrape_pokemon_images: one raw image per Pokémon in data/external/images.

data.source synthetic draws each creature from its type (deterministic by base.seed);
url fetches data.images_url, a URL template ({id}, {id:03d}, {name}, {slug}) or a local folder.
Every image is decoded to verify it. Failures are listed with their reason in
data/external/scrape_report.json; the stage fails only when there are more than
data.max_failures of them. Raw files keep their bytes; their extension follows their format.
A file over data.max_bytes or past data.deadline, or an image over data.max_pixels (a
decompression bomb, refused before it is decoded), is one failure with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.fsutil import atomic_dir, atomic_write_json
from stages.common.params import DataParams, load_params
from stages.data.download import FetchResult, FetchSettings, fetch_all, is_url, megabytes
from stages.data.images import (
    BadImageError,
    decode_image,
    image_extension,
    limit_pixels,
    png_bytes,
)
from stages.data.pokemon import image_url, slugify
from stages.data.stats import read_stats
from stages.data.synthetic import creature_rng, draw_creature

log = logging.getLogger(__name__)

SYNTHETIC_SIZE = 128  # pixels: raw synthetic sprites, like the 120 px sprites of real sets


def raw_name(pokemon_id: int, data: bytes, max_pixels: int) -> str:
    return f"{pokemon_id:04d}{image_extension(decode_image(data, max_pixels))}"


def image_validator(max_pixels: int) -> Callable[[bytes], None]:
    def validate_image(data: bytes) -> None:
        decode_image(data, max_pixels)  # BadImageError is a ValueError: the downloader reports it

    return validate_image


def draw_all(stats: pd.DataFrame, seed: int, out: Path) -> list[dict]:
    for row in tqdm(stats.itertuples(), total=len(stats), desc="draw creatures", unit="img"):
        type2 = None if pd.isna(row.type2) else str(row.type2)
        image = draw_creature(row.type1, creature_rng(seed, row.id), SYNTHETIC_SIZE, type2)
        (out / f"{row.id:04d}.png").write_bytes(png_bytes(image))
    return []


def folder_index(folder: Path) -> dict[object, Path]:
    """Files of a local image folder by Pokédex number ('25', '025') and by name slug."""
    index: dict[object, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        stem = path.stem
        index.setdefault(int(stem) if stem.isdigit() else slugify(stem), path)
    return index


def copy_from_folder(stats: pd.DataFrame, folder: Path, out: Path, data: DataParams) -> list[dict]:
    if not folder.is_dir():
        raise StageError(f"data.images_url {folder}: no such folder")
    index = folder_index(folder)
    failures = []
    for row in tqdm(stats.itertuples(), total=len(stats), desc="copy images", unit="img"):
        path = index.get(row.id) or index.get(slugify(row.name))
        if path is None:
            reason = f"no file named {row.id} or {slugify(row.name)} in {folder}"
            failures.append({"id": row.id, "name": row.name, "url": str(folder), "reason": reason})
            continue
        failure = {"id": row.id, "name": row.name, "url": str(path)}
        size = path.stat().st_size
        if size > data.max_bytes:
            reason = (
                f"{megabytes(size)}, over data.max_bytes ({megabytes(data.max_bytes)}): "
                "refused; raise data.max_bytes in params.yaml if the file is genuine"
            )
            failures.append({**failure, "reason": reason})
            continue
        content = path.read_bytes()
        try:
            (out / raw_name(row.id, content, data.max_pixels)).write_bytes(content)
        except BadImageError as error:
            failures.append({**failure, "reason": str(error)})
    return failures


def download_all(stats: pd.DataFrame, data: DataParams, out: Path) -> list[dict]:
    template = str(data.images_url)
    items = [(row.id, image_url(template, row.id, row.name)) for row in stats.itertuples()]
    settings = FetchSettings(
        timeout=data.timeout,
        retries=data.retries,
        backoff=data.backoff,
        concurrency=data.concurrency,
        max_bytes=data.max_bytes,
        deadline=data.deadline,
    )
    validate = image_validator(data.max_pixels)
    results: Iterable[FetchResult] = fetch_all(
        items, paths.download_cache_dir(), settings, validate, desc="download images"
    )
    names = dict(zip(stats["id"], stats["name"], strict=True))
    failures, cached = [], 0
    for result in results:
        if result.error or result.path is None:
            failures.append(
                {
                    "id": result.key,
                    "name": names[result.key],
                    "url": result.url,
                    "reason": result.error,
                }
            )
            continue
        cached += result.cached
        content = result.path.read_bytes()
        name = raw_name(int(result.key), content, data.max_pixels)  # type: ignore[call-overload]
        (out / name).write_bytes(content)
    log.info("%d images were already downloaded and valid: not fetched again", cached)
    return failures


def main() -> None:
    params = load_params("base", "data")
    data = params.data
    stats = read_stats()
    limit_pixels(data.max_pixels)  # Pillow's own bomb check, at the same cap, before threads
    with atomic_dir(paths.RAW_IMAGES) as out:
        if data.source == "synthetic":
            failures, origin = draw_all(stats, params.base.seed, out), "synthetic"
        elif is_url(str(data.images_url)):
            failures, origin = download_all(stats, data, out), str(data.images_url)
        else:
            folder = Path(str(data.images_url).removeprefix("file://")).expanduser()
            failures, origin = copy_from_folder(stats, folder, out, data), str(folder)
        report = {
            "source": origin,
            "pokemon": len(stats),
            "images": len(stats) - len(failures),
            "failed": len(failures),
            "max_failures": data.max_failures,
            "failures": failures,
        }
        atomic_write_json(paths.SCRAPE_REPORT, report)
        if len(failures) > data.max_failures:
            raise StageError(
                f"{len(failures)} of {len(stats)} images failed, more than data.max_failures "
                f"({data.max_failures}); each failure and its reason is in {paths.SCRAPE_REPORT}. "
                "Fix data.images_url or raise data.max_failures; files already fetched are "
                "kept in the download cache and are not fetched again."
            )
    log.info(
        "%d images in %s, %d failed (see %s)",
        report["images"],
        paths.RAW_IMAGES,
        len(failures),
        paths.SCRAPE_REPORT,
    )


if __name__ == "__main__":
    run_stage(main)
