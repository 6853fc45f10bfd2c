"""The prompt playground's wire format, shared by the page's kernel (client.py) and the
generation worker (worker.py). Standard library only: the kernel imports it.

JSON lines over a Unix domain socket: one JSON object per line, each with a "type".

    client -> worker   draw {id, request}, cancel {id}, status, stop
    worker -> client   ready {base, device, dtype, threads, pid, started, seconds}
                       queued {id, position}, started {id, at}, image {id, column, seed, png},
                       column_failed {id, column, message}, finished {id, seconds, started_at,
                       finished_at}, cancelled {id}, rejected {id, message}, status {...}
    client only        worker_gone {id, message}: the worker died or could not start

`png` is a base64 PNG; `at`, `started_at`, `finished_at` are the worker's monotonic clock
(one clock for every client, so two clients' draws can be compared). Nothing read from the
socket is trusted beyond this schema: requests are rebuilt field by field with their types
checked (from_json), their values checked against the params schema (check), and nothing is
ever unpickled or evaluated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

WORKSPACE = "workspace"  # the rev of the LoRA in the repository's own outputs/lora
REV = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # a full git commit sha (sha1 or sha256)
DRAW_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_LINE = 1 << 20  # bytes of one client message: a request is a few hundred
MAX_EVENT_LINE = 64 << 20  # bytes of one worker event: a 1024 px PNG in base64 fits
MAX_TEXT = 1000  # characters of a prompt or a negative prompt
MAX_LABEL = 60
MAX_COLUMNS = 8  # the worker keeps 8 LoRAs loaded: one draw never evicts its own
MAX_BLEND_PARTS = 4
MAX_SEEDS = 64
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
SIZE_RANGE = (16, 1024)  # px, as resize.size in params.yaml
SIZE_STEP = 8  # px: a whole number of latent pixels for SD's VAE (8) and the tiny one (4)
# The request's fields that GenerateParams checks, by GenerateParams' name.
GENERATE_FIELDS = {
    "prompts": "prompt",
    "seeds": "seeds",
    "scheduler": "scheduler",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "batch_size": "batch_size",
}


class BadRequest(ValueError):
    """A request the playground does not draw; the message names the field and what is
    allowed."""


# ---------------------------------------------------------------------------------------------
# Reading JSON values with their types checked: a bool is no int, a string no number.


def _text(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key} must be a string, not {_kind(value)}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}{key} must be a whole number, not {_kind(value)}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{where}{key} must be a finite number, not {_kind(value)}")
    return float(value)


def _list(data: Mapping[str, Any], key: str, where: str, default: Any = None) -> list[Any]:
    value = data.get(key, default)
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{where}{key} must be a list, not {_kind(value)}")
    return list(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null (or missing)"
    return f"{type(value).__name__} {value!r}"[:80]


def _only(data: Any, cls: type, where: str, extra: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BadRequest(f"{where or 'the request'} must be an object, not {_kind(data)}")
    allowed = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(
            f"{where}{unknown[0]} is not a field; allowed: {', '.join(sorted(allowed))}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# The request.


@dataclass(frozen=True)
class BaseColumn:
    """The base model alone (every LoRA off)."""

    label: str = "base"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "base", "label": self.label}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> BaseColumn:
        data = _only(data, cls, where, ("kind",))
        return cls(label=_text(data, "label", where, "base"))


@dataclass(frozen=True)
class LoraColumn:
    """One experiment's LoRA at `scale` (cross_attention_kwargs scale, as the stage draws it).
    `rev` is the experiment's full git commit sha, or "workspace" for outputs/lora."""

    label: str
    rev: str
    scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "lora", "label": self.label, "rev": self.rev, "scale": self.scale}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> LoraColumn:
        data = _only(data, cls, where, ("kind",))
        return cls(
            label=_text(data, "label", where),
            rev=_text(data, "rev", where),
            scale=_number(data, "scale", where, 1.0),
        )


@dataclass(frozen=True)
class BlendPart:
    label: str
    rev: str
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "rev": self.rev, "weight": self.weight}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> BlendPart:
        data = _only(data, cls, where)
        return cls(
            label=_text(data, "label", where),
            rev=_text(data, "rev", where),
            weight=_number(data, "weight", where),
        )


@dataclass(frozen=True)
class BlendColumn:
    """Two or more LoRAs at once, each with its weight (diffusers' multi-adapter
    set_adapters(names, adapter_weights=weights))."""

    label: str
    parts: tuple[BlendPart, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "blend", "label": self.label, "parts": [p.to_json() for p in self.parts]}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> BlendColumn:
        data = _only(data, cls, where, ("kind",))
        parts = _list(data, "parts", where)
        return cls(
            label=_text(data, "label", where),
            parts=tuple(
                BlendPart.from_json(part, f"{where}parts[{i}].") for i, part in enumerate(parts)
            ),
        )


Column = BaseColumn | LoraColumn | BlendColumn
COLUMN_KINDS: dict[str, type] = {"base": BaseColumn, "lora": LoraColumn, "blend": BlendColumn}


def column_from_json(data: Any, where: str) -> Column:
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in COLUMN_KINDS:
        raise BadRequest(f"{where}kind must be one of {', '.join(COLUMN_KINDS)}, not {kind!r}")
    return COLUMN_KINDS[kind].from_json(data, where)


@dataclass(frozen=True)
class DrawRequest:
    """One click of Draw: `prompt` for every seed, in every column, from the same initial noise
    per seed. `size` is the side in px (None: the model's own size)."""

    prompt: str
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    scheduler: str = "dpm++"
    batch_size: int = 8
    size: int | None = None
    columns: tuple[Column, ...] = field(default=(BaseColumn(),))

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seeds": list(self.seeds),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "scheduler": self.scheduler,
            "batch_size": self.batch_size,
            "size": self.size,
            "columns": [column.to_json() for column in self.columns],
        }

    @classmethod
    def from_json(cls, data: Any) -> DrawRequest:
        """The request in `data`, every field's type checked (BadRequest otherwise); call
        check() for the values."""
        data = _only(data, cls, "")
        seeds = _list(data, "seeds", "", [0, 1, 2, 3])
        columns = _list(data, "columns", "", [BaseColumn().to_json()])
        size = data.get("size")
        return cls(
            prompt=_text(data, "prompt", ""),
            negative_prompt=_text(data, "negative_prompt", "", ""),
            seeds=tuple(_int({"seed": s}, "seed", f"seeds[{i}] ") for i, s in enumerate(seeds)),
            num_inference_steps=_int(data, "num_inference_steps", "", 25),
            guidance_scale=_number(data, "guidance_scale", "", 4.0),
            scheduler=_text(data, "scheduler", "", "dpm++"),
            batch_size=_int(data, "batch_size", "", 8),
            size=None if size is None else _int(data, "size", ""),
            columns=tuple(
                column_from_json(column, f"columns[{i}].") for i, column in enumerate(columns)
            ),
        )

    def check(self) -> DrawRequest:
        """Raise BadRequest unless every value is one that params.yaml's generate section
        accepts (the same GenerateParams decides) and within the playground's limits; returns
        the request, to chain."""
        try:
            data = self.to_json()
        except (AttributeError, TypeError) as error:
            raise BadRequest(
                "the request's fields have the wrong types (columns must be BaseColumn, "
                f"LoraColumn or BlendColumn; seeds a tuple of whole numbers): {error}"
            ) from None
        checked = DrawRequest.from_json(data)  # the types, as the worker sees them
        check_generate_values(checked)
        check_playground_limits(checked)
        for where, scale in scales(checked):
            check_scale(where, scale)
        return self


def scales(request: DrawRequest) -> list[tuple[str, float]]:
    """Every LoRA scale and blend weight of the request, with the field that holds it."""
    found = []
    for i, column in enumerate(request.columns):
        if isinstance(column, LoraColumn):
            found.append((f"columns[{i}].scale", column.scale))
        elif isinstance(column, BlendColumn):
            found += [
                (f"columns[{i}].parts[{j}].weight", p.weight) for j, p in enumerate(column.parts)
            ]
    return found


def check_generate_values(request: DrawRequest) -> None:
    """The request's values through stages.common.params.GenerateParams: the playground and
    params.yaml accept exactly the same prompts, seeds, schedulers, steps, guidance and batch
    sizes. Imported here, not at the top: the schema brings pydantic and pandas."""
    from pydantic import ValidationError

    from stages.common.params import GenerateParams

    values = {
        "prompts": [request.prompt],
        "seeds": list(request.seeds),
        "scheduler": request.scheduler,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "batch_size": request.batch_size,
    }
    try:
        GenerateParams(**values)
    except ValidationError as error:
        raise BadRequest(describe(error, request)) from None


def check_scale(where: str, value: float) -> None:
    """A LoRA scale or blend weight: the range of generate.lora_scale."""
    from pydantic import ValidationError

    from stages.common.params import GenerateParams

    try:
        GenerateParams(lora_scale=value)
    except ValidationError as error:
        message = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{where} = {value!r} is not allowed: {message}") from None


def describe(error: Any, request: DrawRequest) -> str:
    """pydantic's first error, in the request's own field names."""
    item = error.errors()[0]
    loc = [str(part) for part in item["loc"]]
    message = item["msg"].removeprefix("Value error, ")
    name = GENERATE_FIELDS.get(loc[0], loc[0]) if loc else "request"
    if name == "prompt":
        return f"prompt = {request.prompt!r} is not allowed: it must not be blank"
    if name == "seeds" and len(loc) > 1:
        name = f"seeds[{loc[1]}]"
    shown = item.get("input")
    return f"{name} = {shown!r} is not allowed: {message}"


def check_playground_limits(request: DrawRequest) -> None:
    """What params.yaml does not bound but one click must not exceed."""
    if len(request.prompt) > MAX_TEXT:
        raise BadRequest(f"prompt is {len(request.prompt)} characters; at most {MAX_TEXT}")
    if len(request.negative_prompt) > MAX_TEXT:
        raise BadRequest(f"negative_prompt is longer than {MAX_TEXT} characters")
    if not 1 <= len(request.seeds) <= MAX_SEEDS:
        raise BadRequest(f"seeds: give 1 to {MAX_SEEDS} seeds, not {len(request.seeds)}")
    big = [seed for seed in request.seeds if seed > MAX_SEED]
    if big:
        raise BadRequest(f"seeds = {big[0]} is not allowed: at most {MAX_SEED}")
    if request.size is not None:
        low, high = SIZE_RANGE
        if not low <= request.size <= high or request.size % SIZE_STEP:
            raise BadRequest(
                f"size = {request.size} is not allowed: a multiple of {SIZE_STEP} px from "
                f"{low} to {high}, or none for the model's own size"
            )
    if not 1 <= len(request.columns) <= MAX_COLUMNS:
        raise BadRequest(
            f"columns: give 1 to {MAX_COLUMNS} columns (base, LoRAs, blends), "
            f"not {len(request.columns)}"
        )
    for i, column in enumerate(request.columns):
        check_column(column, f"columns[{i}]")


def check_column(column: Column, where: str) -> None:
    check_label(column.label, f"{where}.label")
    if isinstance(column, LoraColumn):
        check_rev(column.rev, f"{where}.rev")
    elif isinstance(column, BlendColumn):
        if not 2 <= len(column.parts) <= MAX_BLEND_PARTS:
            raise BadRequest(
                f"{where}.parts: a blend has 2 to {MAX_BLEND_PARTS} LoRAs, not {len(column.parts)}"
            )
        for j, part in enumerate(column.parts):
            check_label(part.label, f"{where}.parts[{j}].label")
            check_rev(part.rev, f"{where}.parts[{j}].rev")
        revs = [part.rev for part in column.parts]
        if len(set(revs)) != len(revs):
            raise BadRequest(f"{where}.parts: each LoRA once; a rev appears twice")


def check_label(label: str, where: str) -> None:
    if not label.strip() or len(label) > MAX_LABEL:
        raise BadRequest(f"{where} = {label!r} is not allowed: 1 to {MAX_LABEL} characters")


def check_rev(rev: str, where: str) -> None:
    if rev != WORKSPACE and not REV.match(rev):
        raise BadRequest(
            f"{where} = {rev!r} is not allowed: an experiment's full git commit sha "
            f"(40 hex digits) or {WORKSPACE!r}"
        )


# ---------------------------------------------------------------------------------------------
# Lines.


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line of JSON (never NaN: the other side rejects it)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(line: bytes) -> dict[str, Any]:
    """One line as a message: a JSON object with a string "type" (ValueError otherwise)."""
    message = json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("a message is a JSON object with a string 'type'")
    return message


def draw_id(message: Mapping[str, Any]) -> str:
    """The id of a draw or cancel message (BadRequest unless it is a short plain string)."""
    value = message.get("id")
    if not isinstance(value, str) or not DRAW_ID.match(value):
        raise BadRequest("id must be 1 to 64 letters, digits, '.', '_' or '-'")
    return value
