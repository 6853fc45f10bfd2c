"""The params schema: defaults valid, every bad value named in one line, nothing overwritten."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bench.harness.project import REPO, default_params, merged
from stages.common.params import SECTIONS, Params, ParamsError, load_params


def write(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merged(default_params(), sections), allow_unicode=True))
    return path


def test_repository_params_are_valid_and_match_the_schema():
    params = load_params(path=REPO / "params.yaml")
    raw = default_params()
    assert set(raw) == set(SECTIONS)
    for name, section in SECTIONS.items():
        assert set(raw[name]) == set(section.model_fields), name
    assert params.base.pokemon_type == "Water" and params.data.source == "synthetic"
    # the schema's defaults are the shipped params: a form built from it starts from them
    assert params.model_dump() == Params().model_dump()


def test_every_params_entry_has_a_comment():
    for line in (REPO / "params.yaml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):
            assert "#" in line.split(":", 1)[1], f"no comment on: {line}"


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"resize": {"size": 0}}, r"resize\.size = 0 is not allowed: .*greater than or equal"),
        ({"resize": {"size": "big"}}, r"resize\.size = 'big' is not allowed: .*valid integer"),
        ({"base": {"seed": -1}}, r"base\.seed = -1 is not allowed"),
        ({"base": {"pokemon_type": "Watr"}}, r"pokemon_type = 'Watr' .*allowed: all, Normal"),
        ({"base": {"sed": 1}}, r"unknown key base\.sed; allowed keys in base: seed, pokemon_type"),
        ({"data": {"source": "web"}}, r"data\.source = 'web' .*'synthetic' or 'url'"),
        ({"data": {"source": "url"}}, r"stats_url is not set: required when data\.source is url"),
        ({"data": {"concurrency": 0}}, r"data\.concurrency = 0"),
        ({"data": {"images_url": "http://x/{num}.png"}}, r"data\.images_url .*\{num\}"),
        ({"resize": {"background": "#GGG"}}, r"resize\.background = '#GGG' .*not a colour"),
        ({"resize": {"caption_template": "a {kind}"}}, r"resize\.caption_template .*\{kind\}"),
        ({"resise": {"size": 32}}, r"unknown section resise; allowed: base, data, resize"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(tmp_path, sections, expected):
    path = write(tmp_path, **sections)
    with pytest.raises(ParamsError) as caught:
        load_params(path=path)
    assert re.search(expected, str(caught.value)), str(caught.value)


def test_type_names_are_case_insensitive(tmp_path):
    params = load_params("base", path=write(tmp_path, base={"pokemon_type": "fire"}))
    assert params.base.pokemon_type == "Fire"
    params = load_params("base", path=write(tmp_path, base={"pokemon_type": "ALL"}))
    assert params.base.pokemon_type == "all"


def test_a_stage_validates_only_its_sections(tmp_path):
    path = write(tmp_path, data={"concurrency": 0})
    assert load_params("base", "resize", path=path).resize.size == 64
    with pytest.raises(ParamsError):
        load_params("data", path=path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(path=tmp_path / "missing.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path=broken)


def test_bad_param_exits_2_with_one_line_per_problem_and_keeps_outputs(workdir):
    workdir.run("download_pokemon_stats")
    workdir.run("scrape_pokemon_images")
    workdir.run("resize_pokemon_images")
    images = workdir.path / "data/processed/images"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    workdir.write_params(resize={"size": 0})
    result = workdir.run("resize_pokemon_images", check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == (
        "error: params.yaml: resize.size = 0 is not allowed: "
        "Input should be greater than or equal to 16"
    )
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_params_are_read_as_yaml_1_2_like_dvc_writes_them(tmp_path):
    """`dvc exp run -S train_lora.mixed_precision=no` writes a bare `no`: a string, not False."""
    path = write(tmp_path)
    text = path.read_text().replace("mixed_precision: 'no'", "mixed_precision: no")
    assert "learning_rate: 0.001" in text
    path.write_text(text.replace("learning_rate: 0.001", "learning_rate: 2e-4"))
    params = load_params("train_lora", path=path)
    assert params.train_lora.mixed_precision == "no"
    assert params.train_lora.learning_rate == 2e-4
