"""Read the normalised stats table that download_pokemon_stats writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.common import paths
from stages.common.errors import StageError


def read_stats(path: Path = paths.STATS) -> pd.DataFrame:
    if not Path(path).exists():
        raise StageError(f"{path} not found; run `dvc repro download_pokemon_stats` first")
    frame = pd.read_csv(path, dtype={"id": int}, keep_default_na=False, na_values=[""])
    frame["type2"] = frame["type2"].astype("string")
    return frame
