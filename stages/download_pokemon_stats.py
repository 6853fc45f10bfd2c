"""Stage download_pokemon_stats: the Pokédex table (id, name, type1, type2, generation).

data.source synthetic draws the table of the synthetic creatures; url reads data.stats_url
(http(s) or a local path), keeps the file byte for byte in data/external and writes the
normalised table, one row per Pokédex id, to data/processed. A file over data.max_bytes, a
download past data.deadline or a table of more than data.max_rows rows is refused.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.fsutil import atomic_write_bytes, atomic_write_json
from stages.common.params import DataParams, load_params
from stages.data.download import (
    FetchError,
    FetchSettings,
    get_bytes,
    is_url,
    make_session,
    megabytes,
)
from stages.data.pokemon import StatsFormatError, normalize_stats
from stages.data.synthetic import synthetic_stats

log = logging.getLogger(__name__)


def fetch_stats_csv(data: DataParams) -> bytes:
    """The bytes of data.stats_url, from the web or the local disk."""
    location = str(data.stats_url)
    if is_url(location):
        settings = FetchSettings(
            timeout=data.timeout,
            retries=data.retries,
            backoff=data.backoff,
            concurrency=1,
            max_bytes=data.max_bytes,
            deadline=data.deadline,
        )
        try:
            return get_bytes(make_session(settings), location, settings)
        except FetchError as error:
            raise StageError(f"data.stats_url {location}: download failed: {error}") from None
    path = Path(location.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise StageError(
            f"data.stats_url {location}: no such file; give an http(s) URL or an existing CSV path"
        )
    size = path.stat().st_size
    if size > data.max_bytes:
        raise StageError(
            f"data.stats_url {location}: {megabytes(size)}, over data.max_bytes "
            f"({megabytes(data.max_bytes)}); raise data.max_bytes in params.yaml if the file is "
            "genuine"
        )
    return path.read_bytes()


def parse_csv(data: bytes, where: str, max_rows: int | None = None) -> pd.DataFrame:
    """Every cell as text; UTF-8 (with or without BOM), falling back to Windows-1252.

    More than `max_rows` rows is a StageError: only max_rows + 1 of them are parsed.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            frame = pd.read_csv(
                io.BytesIO(data),
                dtype=str,
                keep_default_na=False,
                encoding=encoding,
                nrows=None if max_rows is None else max_rows + 1,
            )
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise StageError(f"{where}: not a readable CSV: {error}".replace("\n", " ")) from None
        if max_rows is not None and len(frame) > max_rows:
            raise StageError(
                f"{where}: more than data.max_rows ({max_rows}) rows; a Pokédex has about "
                "1,200 with its forms. Raise data.max_rows in params.yaml if the table is genuine"
            )
        return frame
    raise StageError(f"{where}: neither UTF-8 nor Windows-1252 text")


def main() -> None:
    params = load_params("base", "data")
    data = params.data
    if data.source == "synthetic":
        raw_bytes = synthetic_stats(data.synthetic_count, params.base.seed).to_csv(index=False)
        raw_bytes, where = raw_bytes.encode("utf-8"), "synthetic stats"
    else:
        raw_bytes, where = fetch_stats_csv(data), f"data.stats_url {data.stats_url}"
    max_rows = data.max_rows if data.source == "url" else None  # synthetic: synthetic_count
    try:
        stats, report = normalize_stats(parse_csv(raw_bytes, where, max_rows))
    except StatsFormatError as error:
        raise StageError(f"{where}: {error}") from None
    if stats.empty:
        reasons = sorted({d["reason"] for d in report["dropped"]})
        raise StageError(f"{where}: no usable row of {report['rows_in']}: {'; '.join(reasons)}")
    report = {"source": data.source, "stats_url": data.stats_url, **report}
    atomic_write_bytes(paths.STATS_RAW, raw_bytes)
    atomic_write_bytes(paths.STATS, stats.to_csv(index=False).encode("utf-8"))
    atomic_write_json(paths.STATS_REPORT, report)
    log.info(
        "%d Pokémon from %d rows (%d forms collapsed, %d rows dropped) -> %s",
        report["pokemon"],
        report["rows_in"],
        report["forms_collapsed"],
        len(report["dropped"]),
        paths.STATS,
    )


if __name__ == "__main__":
    run_stage(main)
