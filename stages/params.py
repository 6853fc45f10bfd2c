"""The typed schema of params.yaml: one pydantic model per section, the single source of truth.

Every stage validates the sections it reads before it touches a file; the dashboard builds its
launch form from the same models. `python -m stages.params` checks the whole file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import ImageColor
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from stages import paths
from stages.cli import run_stage
from stages.errors import ParamsError
from stages.pokemon import TYPES, URL_FIELDS, canonical_type, check_template


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise; defaults are validated like given values.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BaseParams(Section):
    seed: int = Field(42, ge=0, description="Master random seed: data, splits, training, sampling")
    pokemon_type: str = Field(
        "Water",
        description="Type the LoRA learns and the classifier detects; 'all' trains on every image",
        json_schema_extra={"choices": ["all", *TYPES]},
    )

    @field_validator("pokemon_type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        found = canonical_type(value) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"unknown Pokémon type; allowed: all, {', '.join(TYPES)}")
        return found


class DataParams(Section):
    source: Literal["synthetic", "url"] = Field(
        "synthetic", description="'synthetic' draws creatures offline; 'url' downloads real data"
    )
    synthetic_count: int = Field(
        540, ge=18, le=20000, description="Number of synthetic Pokémon (all 18 types)"
    )
    stats_url: str | None = Field(
        None, description="Stats CSV: an http(s) URL or a local path (source: url)"
    )
    images_url: str | None = Field(
        None,
        description="Image URL template with {id}, {id:03d}, {name} or {slug}, or a local "
        "folder (source: url)",
    )
    max_failures: int = Field(
        10, ge=0, description="Images that may fail to download before the stage fails"
    )
    concurrency: int = Field(8, ge=1, le=64, description="Parallel downloads")
    timeout: float = Field(10.0, gt=0, le=600, description="Seconds to wait for a server")
    retries: int = Field(
        3, ge=0, le=10, description="Retries of a time-out, a connection error or a 5xx"
    )
    backoff: float = Field(
        0.5, ge=0, le=60, description="Seconds before the first retry, doubling each time"
    )

    @field_validator("stats_url", "images_url")
    @classmethod
    def _needed_for_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            value = None
        if value is None and info.data.get("source") == "url":
            raise ValueError("required when data.source is url")
        if value is not None and info.field_name == "images_url" and "{" in value:
            check_template(value, URL_FIELDS, {"id": 25, "name": "Pikachu", "slug": "pikachu"})
        return value


class ResizeParams(Section):
    size: int = Field(64, ge=16, le=1024, description="Side of the square images, in pixels")
    background: str = Field(
        "#FFFFFF", description="Colour behind transparent pixels: a name or #RRGGBB"
    )
    caption_template: str = Field(
        "a pkmnlora pokemon",
        description="Caption of each training image; may use {name}, {type1}, {type2}, {id}",
    )

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        try:
            ImageColor.getrgb(value)
        except ValueError:
            raise ValueError("not a colour; use a name such as 'white' or '#RRGGBB'") from None
        return value

    @field_validator("caption_template")
    @classmethod
    def _caption(cls, value: str) -> str:
        sample = {"name": "Pikachu", "type1": "Electric", "type2": "", "id": 25}
        check_template(value, tuple(sample), sample)
        return value


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    resize: ResizeParams = ResizeParams()


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Params.model_fields.items()  # type: ignore[misc]
}


def read_params_file(path: Path = paths.PARAMS) -> dict[str, Any]:
    """The raw mapping in params.yaml, or ParamsError saying why it cannot be read."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def describe_errors(error: ValidationError, prefix: str, path: Path) -> list[str]:
    """One line per pydantic error: the key, the bad value and what is allowed."""
    lines = []
    for item in error.errors():
        key = ".".join([prefix, *map(str, item["loc"])]) if prefix else ".".join(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            section = SECTIONS.get(prefix, Params)
            allowed = ", ".join(section.model_fields)
            lines.append(f"{path}: unknown key {key}; allowed keys in {prefix}: {allowed}")
            continue
        shown = item.get("input")
        if shown is None:
            lines.append(f"{path}: {key} is not set: {message}")
        else:
            lines.append(f"{path}: {key} = {shown!r} is not allowed: {message}")
    return lines


def load_params(*sections: str, path: Path = paths.PARAMS) -> Params:
    """Validate the given sections of params.yaml (all when none are given) and return them.

    Sections not asked for keep their defaults and are not validated, so a stage fails only
    for the keys it reads. Unknown section names always fail: a misspelt section would
    otherwise be silently replaced by defaults.
    """
    raw = read_params_file(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}"
        )
    wanted = sections or tuple(SECTIONS)
    values: dict[str, Section] = {}
    problems: list[str] = []
    for name in wanted:
        content = raw.get(name) or {}
        if not isinstance(content, dict):
            problems.append(f"{path}: {name} must be a mapping of keys, not {content!r}")
            continue
        try:
            values[name] = SECTIONS[name].model_validate(content)
        except ValidationError as error:
            problems.extend(describe_errors(error, name, path))
    if problems:
        raise ParamsError("\n".join(problems))
    return Params.model_construct(**values)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else paths.PARAMS
    load_params(path=path)
    print(f"{path}: ok")


if __name__ == "__main__":
    run_stage(main)
