"""View models of the prompt playground: pure functions from the dashboard's state to the draw
request (which columns: the base and the picked experiments' LoRAs side by side, one LoRA at a
strip of scales, or a blend of two), to the pane's gallery as the images arrive, to its status
line, and to the experiment that "Keep as experiment" queues. No widgets, no worker, no dvc:
tested on recorded `dvc exp show` JSON (tests/test_playground_pane.py)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from dashboard.data import format_cell, is_missing
from dashboard.playground.protocol import (
    MAX_LABEL,
    BaseColumn,
    BlendColumn,
    BlendPart,
    DrawRequest,
    LoraColumn,
)
from dashboard.state import DashboardState, PlaygroundState
from dashboard.state import ExperimentState as S
from dashboard.views import WORKSPACE, colors, labels, short_name

# The generate params the playground draws with, as the stage reads them: the fields keep their
# values when an experiment is kept (its other params are the picked experiment's).
GENERATE_FIELDS = {
    "generate.num_inference_steps": "num_inference_steps",
    "generate.guidance_scale": "guidance_scale",
    "generate.scheduler": "scheduler",
    "generate.lora_scale": "scale",
}
MAX_SEEDS = 64
HAS_LORA = frozenset(
    {S.SUCCESS, S.WORKSPACE}
)  # rows whose LoRA is written (a run that ended well)


# ----- the fields ----------------------------------------------------------------------------
def parse_seeds(text: str) -> tuple[int, ...]:
    """'0, 5, 9' or '0-3' (four seeds) or both ('0-3, 10'): distinct whole numbers >= 0, in the
    order typed. ValueError saying what is allowed otherwise."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if not match:
            raise ValueError(
                f"seeds: {part!r} is not a seed; type whole numbers and ranges, like '0, 5, 9' "
                "or '0-3'"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"seeds: the range {part!r} runs backwards; write {high}-{low}")
        seeds.extend(range(low, min(high, low + MAX_SEEDS) + 1))
    unique = list(dict.fromkeys(seeds))
    if not unique:
        raise ValueError("seeds: type at least one seed, like '0-3' (four seeds)")
    if len(unique) > MAX_SEEDS:
        raise ValueError(f"seeds: at most {MAX_SEEDS} at once, {len(unique)} typed")
    return tuple(unique)


def seed_text(count: int, first: int = 0) -> str:
    """The seeds text for a count of seeds from `first`: 4 -> '0-3'."""
    return str(first) if count <= 1 else f"{first}-{first + count - 1}"


def parse_numbers(text: str, what: str) -> list[float]:
    """'0, 0.5, 1, 1.5' -> [0.0, 0.5, 1.0, 1.5]; ValueError naming `what` otherwise."""
    values = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(
                f"{what}: {part!r} is not a number; type them like '0, 0.5, 1'"
            ) from None
    if not values:
        raise ValueError(f"{what}: type at least one number, like '0, 0.5, 1'")
    return values


def defaults_from_row(form: PlaygroundState, row: Mapping[str, Any]) -> None:
    """Fill steps, guidance, scheduler and scale from a row's generate params (the workspace's:
    what the pipeline draws with), once."""
    for param, name in GENERATE_FIELDS.items():
        value = row.get(param)
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            setattr(form, name, type(getattr(form, name))(value))
    form.defaults_from = str(row.get("id"))


# ----- the columns ---------------------------------------------------------------------------
@dataclass
class Candidate:
    """A picked row whose LoRA the playground can draw with."""

    rev: str  # the experiment's commit sha, or "workspace"
    label: str
    detail: str  # what it changed from its baseline
    color: str | None


@dataclass
class Columns:
    """The columns of a draw, their labels and details (in request order), and the picked
    rows left out, with why."""

    columns: tuple[Any, ...]
    labels: list[str]
    details: list[str]
    colors: list[str | None]
    notes: list[str] = field(default_factory=list)

    def add(self, column: Any, label: str, detail: str, color: str | None) -> None:
        """One more column (its label cut to what the worker takes: the detail says all)."""
        label = label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"
        column = replace(column, label=label) if column.label != label else column
        self.columns += (column,)
        self.labels.append(label)
        self.details.append(detail)
        self.colors.append(color)


def changed_text(state: DashboardState, rev: str) -> str:
    params = state.frame.attrs.get("params", [])
    changed = state.changed.get(rev, {})
    text = ", ".join(f"{short_name(p, params)}={format_cell(v)}" for p, v in changed.items())
    return text or ("the workspace" if rev == WORKSPACE else "baseline params")


def candidates(state: DashboardState) -> tuple[list[Candidate], list[str]]:
    """The picked rows with a LoRA (finished experiments, baselines, the workspace), in pick
    order, and a note for each picked row without one."""
    frame = state.frame
    rows = {row["id"]: row for row in frame.to_dict("records")}
    names, shades = labels(frame, state.picked), colors(state.picked)
    found, notes = [], []
    base = _base_model(frame)
    for rev in state.picked:
        row = rows.get(rev)
        if row is None:
            continue
        if row["state"] not in HAS_LORA:
            notes.append(f"{names[rev]} is {row['state']}: it has no LoRA to draw with yet")
            continue
        other = row.get("model.base")
        if base is not None and other is not None and format_cell(other) != format_cell(base):
            notes.append(
                f"{names[rev]} was trained on the base model {format_cell(other)}, the "
                f"playground runs {format_cell(base)}: apply it to draw with its LoRA"
            )
            continue
        found.append(Candidate(rev, names[rev], changed_text(state, rev), shades.get(rev)))
    return found, notes


def _base_model(frame: pd.DataFrame) -> Any:
    """The workspace's model.base: the base model the worker loaded."""
    workspace = frame[frame["kind"] == "workspace"]
    if workspace.empty or "model.base" not in frame:
        return None
    return workspace.iloc[0]["model.base"]


def draw_columns(form: PlaygroundState, state: DashboardState) -> Columns:
    """The base first, then by mode: each picked LoRA at the scale (side by side), the first
    picked LoRA at each scale of the strip, or the first two picked LoRAs blended with the
    weights. ValueError when the mode needs more picks than there are."""
    found, notes = candidates(state)
    made = Columns((), [], [], [], notes)
    made.add(BaseColumn("base"), "base", "no LoRA", None)
    if form.mode == "side":
        for c in found:
            made.add(LoraColumn(c.label, c.rev, form.scale), c.label, c.detail, c.color)
        if not found:
            notes.append("pick experiments in the table to draw with their LoRAs beside the base")
    elif form.mode == "strip":
        if not found:
            raise ValueError("a scale strip needs one picked experiment with a LoRA")
        first = found[0]
        for scale in parse_numbers(form.strip, "scales"):
            label = f"{first.label} ×{scale:g}"
            made.add(LoraColumn(label, first.rev, scale), label, first.detail, first.color)
        notes += [f"{c.label}: the strip draws the first picked LoRA only" for c in found[1:]]
    elif form.mode == "blend":
        if len(found) < 2:
            raise ValueError("a blend needs two picked experiments with a LoRA")
        weights = parse_numbers(form.weights, "weights")
        if len(weights) != 2:
            raise ValueError(
                f"weights: type two, one per LoRA (like '0.5, 0.5'), not {len(weights)}"
            )
        pair = list(zip(found[:2], weights, strict=True))
        parts = tuple(BlendPart(c.label[:MAX_LABEL], c.rev, weight) for c, weight in pair)
        label = " + ".join(f"{weight:g} {c.label}" for c, weight in pair)
        detail = "both LoRAs at once, with these weights"
        made.add(BlendColumn(label, parts), label, detail, None)
        for c, _ in pair:  # each alone beside the blend, to see what the blend adds
            made.add(LoraColumn(c.label, c.rev, 1.0), c.label, f"{c.detail} · scale 1", c.color)
        notes += [f"{c.label}: a blend takes the first two picked LoRAs" for c in found[2:]]
    else:
        raise ValueError(f"unknown playground mode {form.mode!r}")
    return made


def draw_request(form: PlaygroundState, columns: Columns) -> DrawRequest:
    """The request of the fields and columns, checked as params.yaml's generate section is
    (BadRequest names the field)."""
    if not form.prompt.strip():
        raise ValueError("prompt: type what to draw, like 'a pkmnlora pokemon with a flame tail'")
    request = DrawRequest(
        prompt=form.prompt.strip(),
        negative_prompt=form.negative_prompt.strip(),
        seeds=parse_seeds(form.seeds),
        num_inference_steps=int(form.num_inference_steps),
        guidance_scale=float(form.guidance_scale),
        scheduler=form.scheduler,
        columns=columns.columns,
    )
    request.check()
    return request


# ----- what the pane shows -------------------------------------------------------------------
def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def gallery(form: PlaygroundState) -> dict:
    """The pane's gallery as the Gallery widget draws it: a column per request column, a row per
    seed; an image where it arrived, "drawing…" where it is still to come, the reason where a
    column failed. Returns {columns, rows, images (key -> PNG), empty_text}."""
    request = form.request
    if request is None:
        return {
            "columns": [],
            "rows": [],
            "images": {},
            "empty_text": "Type a prompt and click Draw: the base and the picked experiments' "
            "LoRAs draw it side by side, from the same noise per seed.",
        }
    columns = [
        {"key": f"play:{index}", "label": label, "detail": detail, "color": color}
        for index, (label, detail, color) in enumerate(
            zip(form.column_labels, form.column_details, form.column_colors, strict=True)
        )
    ]
    waiting = "drawing…" if form.outcome is None else (form.outcome or "")
    rows, images = [], {}
    for seed in request.seeds:
        cells = []
        for index, label in enumerate(form.column_labels):
            png = form.images.get((index, seed))
            if png is not None:
                key = f"play:{index}:{seed}"
                images[key] = png
                title = f"{label} — {request.prompt}, seed {seed}"
                cells.append({"key": key, "src": _uri(png), "title": title})
            elif index in form.errors:
                cells.append({"missing": form.errors[index], "text": "failed"})
            else:
                cells.append({"missing": waiting, "text": waiting})
        rows.append({"label": f"seed {seed}", "cells": cells})
    return {"columns": columns, "rows": rows, "images": images, "empty_text": ""}


def worker_html(form: PlaygroundState) -> str:
    """Which base model, device and precision the worker runs (or why it is not running)."""
    if form.worker_error:
        return (
            "<span class='playground-worker playground-error'>Generation worker: "
            f"{html.escape(form.worker_error)}</span>"
        )
    if not form.worker:
        return "<span class='playground-worker'>Starting the generation worker…</span>"
    w = form.worker
    return (
        "<span class='playground-worker'>Runs on "
        f"<b>{html.escape(str(w.get('base', '?')))}</b> · {html.escape(str(w.get('device', '?')))}"
        f" · {html.escape(str(w.get('dtype', '?')))}</span>"
    )


def progress_html(form: PlaygroundState) -> str:
    """'7 of 12 images', then how it ended and in how long; the notes of what was left out."""
    parts = []
    request = form.request
    if request is not None:
        total = len(request.seeds) * len(form.column_labels)
        failed = len(form.errors) * len(request.seeds)
        done = len(form.images)
        text = f"{done} of {total} images"
        if form.outcome == "finished":
            seconds = f" in {form.seconds:.1f} s" if form.seconds is not None else ""
            text = f"{done} images{seconds}" + (f", {failed} failed" if failed else "")
        elif form.outcome:
            text += f" · {form.outcome_text or form.outcome}"
        parts.append(f"<span class='playground-progress' data-done='{done}'>{text}</span>")
    for index, message in sorted(form.errors.items()):  # said in full, not only in a tooltip
        label = form.column_labels[index] if index < len(form.column_labels) else str(index)
        parts.append(
            f"<div class='playground-error' style='color:#cf222e'>{html.escape(label)}: "
            f"{html.escape(message)}</div>"
        )
    parts += [f"<div class='playground-note'>{html.escape(note)}</div>" for note in form.notes]
    return "".join(parts)


# ----- from finding to experiment ------------------------------------------------------------
@dataclass
class KeepPlan:
    """What "Keep as experiment" queues: the params it sets (the picked experiment's params that
    differ from the workspace's, and the playground's generate fields), what it tells the
    person first, or why it cannot."""

    assignments: dict[str, Any]
    based_on: str
    notes: list[str]


def keep_plan(form: PlaygroundState, state: DashboardState) -> KeepPlan:
    """The experiment of the first picked LoRA with the playground's prompt, seeds, steps,
    guidance, scheduler and scale. ValueError for what params cannot say (a blend, a strip)."""
    if form.mode == "blend":
        raise ValueError(
            "a blend of two LoRAs is no param of this pipeline (train_lora trains one LoRA): "
            "switch to Side by side and keep one of them"
        )
    if form.mode == "strip":
        raise ValueError(
            "a strip draws several scales; an experiment has one generate.lora_scale: switch to "
            "Side by side, set the scale and keep that"
        )
    found, _ = candidates(state)
    if not found:
        raise ValueError("pick an experiment with a LoRA in the table to keep it with this prompt")
    chosen = found[0]
    frame = state.frame
    rows = {row["id"]: row for row in frame.to_dict("records")}
    row, current = rows[chosen.rev], rows.get(WORKSPACE, {})
    assignments: dict[str, Any] = {}
    for param in frame.attrs.get("params", []):
        value = row.get(param)
        if param.startswith("generate.") or is_missing(value):
            continue
        if format_cell(value) != format_cell(current.get(param)):
            assignments[param] = value.item() if hasattr(value, "item") else value  # numpy
    seeds = parse_seeds(form.seeds)
    assignments.update(
        {
            "generate.prompts": [form.prompt.strip()],
            "generate.seeds": list(seeds),
            "generate.num_inference_steps": int(form.num_inference_steps),
            "generate.guidance_scale": float(form.guidance_scale),
            "generate.scheduler": form.scheduler,
            "generate.lora_scale": float(form.scale),
        }
    )
    notes = []
    if form.negative_prompt.strip():
        notes.append(
            "the negative prompt is no param of generate_text_to_image: the experiment draws "
            "without it"
        )
    others = [c.label for c in found[1:]]
    if others:
        notes.append(f"kept with {chosen.label}'s params ({', '.join(others)} not)")
    return KeepPlan(assignments, chosen.label, notes)
