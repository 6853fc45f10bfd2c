"""The typed schema of params.yaml: one pydantic model per section, the single source of truth.

Every stage validates the sections it reads before it touches a file; the dashboard builds its
launch form from the same models. The check_params stage (stages/params.py, `python -m
stages.params`) checks the whole file before any other stage runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from PIL import ImageColor
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML, YAMLError

from stages.common import paths
from stages.common.errors import ParamsError
from stages.data.pokemon import TYPES, URL_FIELDS, canonical_type, check_template


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
    max_bytes: int = Field(
        20_000_000, ge=1000, le=10_000_000_000, description="Bytes a downloaded file may have"
    )
    deadline: float = Field(
        120.0, gt=0, le=3600, description="Seconds one file may take, first request to last byte"
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        le=1_000_000_000,
        description="Pixels an image may have, read from its header before decoding",
    )
    max_rows: int = Field(20_000, ge=1, le=10_000_000, description="Rows the stats CSV may have")

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


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SCHEDULERS = ("ddim", "dpm++", "euler")


class TinyModelParams(Section):
    corpus_size: int = Field(
        5400, ge=18, le=100_000, description="Synthetic creatures the tiny base model learns from"
    )
    vae_steps: int = Field(2000, ge=0, le=100_000, description="Autoencoder training steps")
    unet_steps: int = Field(14000, ge=0, le=1_000_000, description="UNet training steps")
    vae_batch_size: int = Field(16, ge=1, le=1024, description="Images per autoencoder step")
    unet_batch_size: int = Field(32, ge=1, le=1024, description="Images per UNet step")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate")
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="Decay of the UNet's moving average of weights (0: none)"
    )


class ModelParams(Section):
    base: str = Field(
        "tiny",
        description="'tiny' (shipped, pretrained here), 'tiny-scratch' (pretrained anew with "
        "model.tiny), a Hugging Face model id such as "
        "stable-diffusion-v1-5/stable-diffusion-v1-5, or a local diffusers folder",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit of model.base (default: main)"
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights' precision for generation; auto: float16 on a GPU"
    )
    tiny: TinyModelParams = TinyModelParams()

    @field_validator("base")
    @classmethod
    def _known_base(cls, value: str) -> str:
        if value in ("tiny", "tiny-scratch") or (HUB_ID.match(value) and not Path(value).exists()):
            return value
        folder = Path(value).expanduser()
        if (folder / "model_index.json").is_file():
            return value
        raise ValueError(
            "expected 'tiny', 'tiny-scratch', a Hugging Face model id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5, or a local folder holding a "
            "diffusers model_index.json"
        )


class TrainLoraParams(Section):
    rank: int = Field(4, ge=1, le=512, description="LoRA rank r of the update matrices")
    alpha: float = Field(
        4.0, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha/r"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="UNet attention layers that get LoRA adapters",
    )
    train_text_encoder: bool = Field(False, description="Also put LoRA on the text encoder")
    max_steps: int = Field(600, ge=1, le=1_000_000, description="Optimizer steps")
    batch_size: int = Field(8, ge=1, le=1024, description="Images per forward pass")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Passes per optimizer step")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW peak learning rate")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="Learning-rate schedule after warm-up"
    )
    lr_warmup_steps: int = Field(20, ge=0, description="Steps of linear warm-up")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate mixed precision; fp16 needs a GPU"
    )
    random_flip: bool = Field(True, description="Mirror training images at random")
    snr_gamma: float | None = Field(
        5.0, gt=0, le=100, description="Min-SNR loss weighting gamma (5 is usual); null: off"
    )
    checkpoint_every: int = Field(
        100, ge=0, description="Save a resumable checkpoint every N steps; 0: never"
    )
    validation_every: int = Field(
        0, ge=0, description="Save validation images every N steps; 0: never"
    )
    validation_prompt: str = Field(
        "a pkmnlora pokemon", description="Prompt of the validation images"
    )
    num_processes: int = Field(
        1,
        ge=1,
        le=4096,
        description="Training processes (one per GPU; data parallel, batch_size split among "
        "them); above 1 the stage runs itself under `accelerate launch`",
    )
    accelerate_config: str | None = Field(
        None,
        description="An accelerate config file (`accelerate config --config_file F`) for GPUs, "
        "nodes and their addresses; null: one machine, num_processes processes",
    )

    @field_validator("accelerate_config")
    @classmethod
    def _config_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give the path of an accelerate config file, or null for none")
        return value

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainLoraParams:
        if self.batch_size % self.num_processes:
            raise ValueError(
                f"batch_size {self.batch_size} does not split evenly among num_processes "
                f"{self.num_processes}: each process trains on batch_size / num_processes images; "
                "make batch_size a multiple of num_processes"
            )
        return self


class GenerateParams(Section):
    prompts: list[str] = Field(
        ["a pkmnlora pokemon", "a pokemon"], min_length=1, description="Prompts to draw"
    )
    seeds: list[int] = Field(
        list(range(24)), min_length=1, description="One image per prompt and seed"
    )
    scheduler: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        "dpm++", description="Sampler: ddim, dpm++ (DPM-Solver++) or euler"
    )
    num_inference_steps: int = Field(25, ge=1, le=1000, description="Denoising steps")
    guidance_scale: float = Field(
        4.0, ge=0, le=50, description="Classifier-free guidance; 7.5 is usual for SD 1.5"
    )
    lora_scale: float = Field(1.0, ge=0, le=4, description="Strength of the LoRA, 0 = the base")
    batch_size: int = Field(8, ge=1, le=256, description="Images per pipeline call")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(seed < 0 for seed in value):
            raise ValueError("seeds must be distinct whole numbers >= 0")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value) or len(set(value)) != len(value):
            raise ValueError("prompts must be distinct and not blank")
        return value


class ClassifierParams(Section):
    test_size: float = Field(
        0.25, gt=0, lt=1, description="Share of images held out to score the classifier"
    )
    epochs: int = Field(15, ge=1, le=1000, description="Passes over the training images")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="AdamW learning rate")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per step")
    augment: bool = Field(
        True, description="Random flips, shifts, jitter, blur and paling in training"
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability above which an image counts as the type"
    )


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    resize: ResizeParams = ResizeParams()
    model: ModelParams = ModelParams()
    train_lora: TrainLoraParams = TrainLoraParams()
    generate: GenerateParams = GenerateParams()
    classifier: ClassifierParams = ClassifierParams()


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Params.model_fields.items()  # type: ignore[misc]
}


def read_params_file(path: Path = paths.PARAMS) -> dict[str, Any]:
    """The raw mapping in params.yaml, or ParamsError saying why it cannot be read."""
    try:
        # YAML 1.2, as DVC reads and writes it: `dvc exp run -S key=no` writes a bare `no`,
        # which is the string "no" in YAML 1.2 but False in PyYAML's YAML 1.1.
        raw = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run from the repository root") from None
    except YAMLError as error:
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
        if isinstance(shown, dict):  # a rule between keys of a section: the message names them
            lines.append(f"{path}: {key}: {message}")
        elif shown is None:
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
