"""The stats CSV mapping, names and URL templates."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from stages.data.pokemon import (
    StatsFormatError,
    check_template,
    image_url,
    in_training_type,
    map_columns,
    normalize_stats,
    slugify,
)


def read(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


# The column names of three public Pokémon tables, with their quirks.
KAGGLE_ABARDE = """#,Name,Type 1,Type 2,Total,HP,Attack,Defense,Speed,Generation,Legendary
3,Venusaur,Grass,Poison,525,80,82,83,80,1,False
3,VenusaurMega Venusaur,Grass,Poison,625,80,100,123,80,1,False
29,Nidoran♀,Poison,,275,55,47,52,41,1,False
83,Farfetch'd,Normal,Flying,352,52,65,55,60,1,False
122,Mr. Mime,Psychic,Fairy,460,40,45,65,90,1,False
"""
LGRESKI = """ID,Name,Form,Type1,Type2,Total,HP,Attack,Defense,Sp. Atk,Sp. Def,Speed,Generation
669,Flabébé, ,Fairy, ,303,44,38,39,61,79,42,6
772,Type: Null, ,Normal, ,534,95,95,95,95,95,59,7
19,Rattata, ,Normal, ,253,30,56,35,25,35,72,1
19,Rattata,Alolan,Dark,Normal,253,30,56,35,25,35,72,7
"""
ROUNAKBANIK = """abilities,name,pokedex_number,type1,type2,generation
"['Overgrow']",Bulbasaur,1,grass,poison,1
"['Torrent']",Squirtle,7,water,,1
"""
PRIMARY = """Pokedex Number,Pokemon Name,Primary Type,Secondary Type
25,Pikachu,Electric,
"""


def test_kaggle_layout_collapses_megas_and_keeps_names():
    stats, report = normalize_stats(read(KAGGLE_ABARDE))
    assert list(stats.columns[:5]) == ["id", "name", "type1", "type2", "generation"]
    assert stats["id"].tolist() == [3, 29, 83, 122]
    assert stats.set_index("id").loc[3, "name"] == "Venusaur"  # the base form, not the mega
    assert set(stats["name"]) >= {"Nidoran♀", "Farfetch'd", "Mr. Mime"}
    assert report["forms_collapsed"] == 1
    assert report["columns"] == {
        "id": "#",
        "name": "Name",
        "type1": "Type 1",
        "type2": "Type 2",
        "generation": "Generation",
    }
    assert "Total" in stats.columns  # other columns are kept


def test_lgreski_layout_blank_cells_hold_a_space():
    stats, _ = normalize_stats(read(LGRESKI))
    by_id = stats.set_index("id")
    assert by_id.loc[669, "name"] == "Flabébé" and pd.isna(by_id.loc[669, "type2"])
    assert by_id.loc[772, "name"] == "Type: Null"
    assert by_id.loc[19, "type1"] == "Normal"  # the regional form does not replace the base
    assert int(by_id.loc[772, "generation"]) == 7


def test_lower_case_types_and_other_column_names():
    stats, report = normalize_stats(read(ROUNAKBANIK))
    assert stats["type1"].tolist() == ["Grass", "Water"]
    assert report["columns"]["id"] == "pokedex_number"
    stats, report = normalize_stats(read(PRIMARY))
    assert report["columns"]["type1"] == "Primary Type"
    assert stats.iloc[0]["name"] == "Pikachu"


def test_rows_that_cannot_be_used_are_reported_not_kept():
    text = "id,name,type1\n1,Good,Fire\nabc,BadId,Fire\n2, ,Water\n3,Strange,Plasma\n"
    stats, report = normalize_stats(read(text))
    assert stats["id"].tolist() == [1]
    reasons = {d["name"]: d["reason"] for d in report["dropped"]}
    assert "positive whole number" in reasons["BadId"]
    assert "name is blank" in reasons[None]
    assert "Plasma" not in stats["type1"].tolist() and "18 types" in reasons["Strange"]


def test_missing_required_column_names_what_is_accepted():
    with pytest.raises(StatsFormatError) as caught:
        map_columns(["Number", "Species", "Colour"])
    message = str(caught.value)
    assert "type1" in message and "Colour" in message and "primarytype" in message


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Farfetch'd", "farfetchd"),
        ("Flabébé", "flabebe"),
        ("Nidoran♀", "nidoran-f"),
        ("Nidoran♂", "nidoran-m"),
        ("Type: Null", "type-null"),
        ("Mr. Mime", "mr-mime"),
        ("Ho-Oh", "ho-oh"),
    ],
)
def test_slugify(name, slug):
    assert slugify(name) == slug


def test_image_url_templates():
    assert image_url("http://x/{id}.png", 7, "Squirtle") == "http://x/7.png"
    assert image_url("http://x/{id:03d}.png", 7, "Squirtle") == "http://x/007.png"
    assert image_url("http://x/{name}.png", 122, "Mr. Mime") == "http://x/Mr.%20Mime.png"
    assert image_url("http://x/{slug}.png", 29, "Nidoran♀") == "http://x/nidoran-f.png"
    assert image_url("http://x/{name}.png", 29, "Nidoran♀") == "http://x/Nidoran%E2%99%80.png"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("http://x/{number}.png", "{number}"),
        ("http://x/{}.png", "{}"),
        ("http://x/{id.png", "cannot parse"),
        ("http://x/{name:03d}.png", "does not format"),
    ],
)
def test_bad_templates_are_named(template, problem):
    sample = {"id": 1, "name": "Bulbasaur", "slug": "bulbasaur"}
    with pytest.raises(ValueError, match="template") as caught:
        check_template(template, ("id", "name", "slug"), sample)
    assert problem in str(caught.value)


def test_training_type_is_the_primary_type():
    assert in_training_type("Water", "Water")
    assert not in_training_type("Rock", "Water")
    assert in_training_type("Rock", "all")
