"""What a Pokémon is to this pipeline: the 18 types, the stats table and image-URL templates."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from urllib.parse import quote

import pandas as pd

TYPES: tuple[str, ...] = (
    "Normal", "Fire", "Water", "Grass", "Electric", "Ice", "Fighting", "Poison", "Ground",
    "Flying", "Psychic", "Bug", "Rock", "Ghost", "Dragon", "Dark", "Steel", "Fairy",
)  # fmt: skip
_TYPE_BY_LOWER = {t.lower(): t for t in TYPES}

STATS_COLUMNS = ("id", "name", "type1", "type2", "generation")

# Column names seen in public Pokémon CSVs, compared after lower-casing and dropping everything
# but letters, digits and '#'. Earlier aliases win when a file has several.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("#", "id", "pokedexnumber", "nationalnumber", "nationaldex", "dexnumber", "ndex",
           "number", "no", "pokedex", "pokedexid"),
    "name": ("name", "pokemonname", "pokemon", "englishname", "speciesname", "species",
             "identifier"),
    "type1": ("type1", "primarytype", "typeprimary", "maintype", "type"),
    "type2": ("type2", "secondarytype", "typesecondary"),
    "generation": ("generation", "gen", "generationid"),
}  # fmt: skip
REQUIRED_COLUMNS = ("id", "name", "type1")

URL_FIELDS = ("id", "name", "slug")


class StatsFormatError(ValueError):
    """The stats CSV cannot be read as a Pokémon table."""


def canonical_type(value: str) -> str | None:
    """'water', ' WATER ' -> 'Water'; None for blanks and for names that are not a type."""
    return _TYPE_BY_LOWER.get(str(value).strip().lower())


def _column_key(name: str) -> str:
    return re.sub(r"[^a-z0-9#]", "", str(name).lower())


def map_columns(columns: list[str]) -> dict[str, str]:
    """Map our column names to the file's: {'id': '#', 'name': 'Name', 'type1': 'Type 1', ...}.

    Raises StatsFormatError naming the columns found and the names accepted when a required
    column is missing.
    """
    by_key: dict[str, str] = {}
    for column in columns:
        by_key.setdefault(_column_key(column), column)
    mapping = {}
    for ours, aliases in COLUMN_ALIASES.items():
        found = next((by_key[a] for a in aliases if a in by_key), None)
        if found is not None:
            mapping[ours] = found
    missing = [c for c in REQUIRED_COLUMNS if c not in mapping]
    if missing:
        accepted = "; ".join(f"{c}: {', '.join(COLUMN_ALIASES[c])}" for c in missing)
        raise StatsFormatError(
            f"the stats CSV has no column for {', '.join(missing)} "
            f"(its columns: {', '.join(map(str, columns))}); accepted names, case and "
            f"punctuation ignored: {accepted}"
        )
    return mapping


def normalize_stats(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Turn a stats table of any common shape into one row per Pokédex id.

    Returns the table (columns id, name, type1, type2, generation, then the file's other
    columns) and a report: the column mapping, and the rows dropped with the reason.
    Several rows per id (megas, regional forms) collapse to the first, which in every public
    table is the base form. Cells holding only spaces count as blank.
    """
    mapping = map_columns(list(raw.columns))
    frame = raw.rename(columns={v: k for k, v in mapping.items()})
    frame = frame.astype("string").apply(lambda s: s.str.strip()).replace({"": pd.NA})
    for column in ("type2", "generation"):
        if column not in frame:
            frame[column] = pd.NA
    dropped: list[dict] = []

    def keep(bad: pd.Series, reason: str) -> pd.DataFrame:
        bad = bad.fillna(True).astype(bool)
        for _, row in frame[bad].iterrows():
            dropped.append({"id": _text(row["id"]), "name": _text(row["name"]), "reason": reason})
        return frame[~bad]

    ids = pd.to_numeric(frame["id"].str.lstrip("#"), errors="coerce").astype("Float64")
    frame = keep(ids.isna() | (ids <= 0) | (ids % 1 != 0), "id is not a positive whole number")
    frame = frame.assign(id=ids[frame.index].astype(int))
    frame = keep(frame["name"].isna(), "name is blank")
    type1 = frame["type1"].map(canonical_type, na_action="ignore")
    frame = keep(type1.isna(), f"type1 is not one of the 18 types ({', '.join(TYPES)})")
    frame = frame.assign(
        type1=type1[frame.index].astype("string"),
        type2=frame["type2"].map(canonical_type, na_action="ignore").astype("string"),
        generation=pd.to_numeric(frame["generation"], errors="coerce").astype("Int64"),
    )

    duplicated = frame["id"].duplicated(keep="first")
    forms = int(duplicated.sum())
    frame = frame[~duplicated].sort_values("id", kind="stable").reset_index(drop=True)
    rest = [c for c in frame.columns if c not in STATS_COLUMNS]
    report = {
        "columns": mapping,
        "rows_in": len(raw),
        "pokemon": len(frame),
        "forms_collapsed": forms,
        "dropped": dropped,
    }
    return frame[list(STATS_COLUMNS) + rest], report


def _text(value: object) -> str | None:
    return None if pd.isna(value) else str(value)


def slugify(name: str) -> str:
    """The lower-case ASCII form that sprite sites use in file names.

    'Farfetch'd' -> 'farfetchd', 'Flabébé' -> 'flabebe', 'Nidoran♀' -> 'nidoran-f',
    'Type: Null' -> 'type-null', 'Mr. Mime' -> 'mr-mime'.
    """
    text = name.replace("♀", "-f").replace("♂", "-m")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"['’.]", "", text.lower())
    text = re.sub(r"[^a-z0-9]+", "-", text)
    return text.strip("-")


def template_fields(template: str) -> list[str]:
    """The field names that a str.format template uses; ValueError if it does not parse."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def check_template(template: str, allowed: tuple[str, ...], sample: Mapping[str, object]) -> None:
    """Raise ValueError naming the problem when `template` uses unknown fields or bad specs."""
    try:
        fields = template_fields(template)
    except ValueError as error:
        raise ValueError(f"cannot parse the template {template!r}: {error}") from None
    unknown = sorted({f for f in fields if f.split(".")[0].split("[")[0] not in allowed})
    if unknown or any(f == "" for f in fields):
        names = ", ".join("{" + f + "}" for f in unknown) or "{}"
        accepted = ", ".join("{" + a + "}" for a in allowed)
        raise ValueError(f"the template uses {names}; allowed fields: {accepted}")
    try:
        template.format(**sample)
    except (ValueError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"the template {template!r} does not format: {error}") from None


def image_url(template: str, pokemon_id: int, name: str) -> str:
    """Fill a URL template: {id} (an int, so {id:03d} works), {name} (URL-quoted), {slug}."""
    return template.format(id=pokemon_id, name=quote(name, safe=""), slug=slugify(name))


def in_training_type(type1: str, pokemon_type: str) -> bool:
    """Whether a Pokémon belongs to the LoRA's training set: its primary type matches."""
    return pokemon_type == "all" or type1 == pokemon_type
