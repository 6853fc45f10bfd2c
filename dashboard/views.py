"""View models: pure functions from the dashboard's state (dashboard.state) to what each panel
draws: the table (columns, cells, marks and stars), the count of rows, the gallery (with one base
column for experiments that share the base model's images), the queue summary, the apply preview
and the default picks. No widgets and no dvc here: they are tested on recorded `dvc exp show` and
`dvc plots diff` JSON (tests/test_dashboard_views.py)."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from plotly.colors import qualitative

from dashboard.data import (
    FilterError,
    best_rows,
    differing_columns,
    filter_experiments,
    format_cell,
    sort_frame,
)
from dashboard.state import ACTIVE, ENDED, NOT_PICKABLE, UNFINISHED, DashboardState
from dashboard.state import ExperimentState as S

WORKSPACE = "workspace"
# The fixed columns shown (id, parent, error, pid and root are not): the name and state before
# the key metrics, the time after them, so that a first view at 1400 px shows the key metrics
# beside the Pokémon without scrolling sideways.
SHOWN_BEFORE_KEYS = ["name", "state"]
SHOWN_AFTER_KEYS = ["created"]
SHOWN_FIXED = [*SHOWN_BEFORE_KEYS, *SHOWN_AFTER_KEYS]
# What the pipeline exists for, first in the table and never hidden by "only columns that
# differ": type fidelity of the base model's and the LoRA's images, their difference, the
# classifier's F1 and the LoRA's final training loss.
KEY_METRICS = ["type_fidelity_base", "type_fidelity_lora", "lift", "f1", "final_loss"]
INTERVAL_ENDS = ("_low", "_high")  # `<metric>_low`, `<metric>_high`: evaluate's 95 % interval
PREFERRED_CURVE = "train_lora/plots/metrics/loss"
PREFERRED_X = ["train_lora.rank", "train_lora.learning_rate"]
PALETTE = qualitative.D3  # one colour per picked experiment, as plotly draws them
MAX_AUTO_PICKS = 8  # experiments launched here are picked as they start, up to this many picks
EMPTY_TABLE = (
    "No experiments yet: run the pipeline (`make demo`), then try "
    "`dvc exp run -S train_lora.rank=8`."
)


# ----- small helpers -------------------------------------------------------------------------
def short_name(param: str, params: list[str]) -> str:
    """train_lora.rank -> rank, unless another param ends in the same key."""
    key = param.rsplit(".", 1)[-1]
    return key if sum(p.rsplit(".", 1)[-1] == key for p in params) == 1 else param


def interval(row: Mapping[str, Any] | pd.Series, metric: str) -> str:
    """` [low, high]`: the metric's 95 % interval where evaluate wrote one (`<metric>_low`,
    `<metric>_high`), so that a person sees whether two figures differ by more than noise."""
    low, high = (
        pd.to_numeric(row.get(f"{metric}{end}"), errors="coerce") for end in INTERVAL_ENDS
    )
    if pd.isna(low) or pd.isna(high):
        return ""
    return f" [{interval_end(low)}, {interval_end(high)}]"


def interval_end(value: float) -> str:
    """An interval's end in two significant digits: enough to see an overlap, and short, so
    that the key metrics fit beside the name in the first view."""
    return f"{value:.2g}"


def is_interval_end(column: str, metrics: Iterable[str]) -> bool:
    """Whether `column` is the `_low` or `_high` end of another metric's interval."""
    metrics = set(metrics)
    return any(
        column.endswith(end) and column.removesuffix(end) in metrics for end in INTERVAL_ENDS
    )


def key_metrics(frame: pd.DataFrame) -> list[str]:
    """The key metrics that this table has, in KEY_METRICS order."""
    metrics = set(frame.attrs.get("metrics", []))
    return [m for m in KEY_METRICS if m in metrics]


def key_metric(frame: pd.DataFrame) -> str | None:
    """The one metric a picked column is summed up by: the LoRA's type fidelity, else the next
    key metric, else the first metric."""
    metrics = frame.attrs.get("metrics", [])
    order = ["type_fidelity_lora", "lift", "f1", "final_loss"]
    return next((m for m in order if m in metrics), metrics[0] if metrics else None)


def labels(frame: pd.DataFrame, picked: list[str]) -> dict[str, str]:
    """{id: name} of the picked rows (a short id when the frame has no such row)."""
    names = dict(zip(frame["id"], frame["name"], strict=False))
    return {rev: names.get(rev, rev[:7]) for rev in picked}


def colors(picked: list[str]) -> dict[str, str]:
    return {rev: PALETTE[i % len(PALETTE)] for i, rev in enumerate(picked)}


def comparable_picks(state: DashboardState) -> list[str]:
    """The picked ids that the table has (a pick from an older read may be gone)."""
    ids = set(state.frame["id"])
    return [rev for rev in state.picked if rev in ids]


def pickable(frame: pd.DataFrame) -> set[str]:
    return set(frame.loc[~frame["state"].isin(NOT_PICKABLE), "id"])


def resolve_picks(frame: pd.DataFrame, revs: Iterable[str]) -> list[str]:
    """Ids for rows given by id or by name, in that order."""
    by_name = dict(zip(frame["name"], frame["id"], strict=False))
    return [by_name.get(rev, rev) for rev in revs]


def default_picks(frame: pd.DataFrame) -> list[str]:
    """The newest finished experiment and its baseline; the workspace when there is none (the
    first view after `make demo`: the workspace's Pokémon without a click)."""
    done = frame[(frame["kind"] == "experiment") & (frame["state"] == S.SUCCESS)]
    if done.empty:
        return [WORKSPACE] if WORKSPACE in set(frame["id"]) else []
    newest = done.sort_values("created", na_position="first").iloc[-1]
    return [rev for rev in (newest["parent"], newest["id"]) if isinstance(rev, str)]


def newly_started(frame: pd.DataFrame, launched: set[str]) -> tuple[list[str], set[str]]:
    """Of the experiments queued from this page (`launched`, by name): the ids of those that
    started or finished well, to pick (their curves grow as they run, their Pokémon appear when
    they finish), and the names that are no longer waiting."""
    rows = frame[(frame["kind"] == "experiment") & frame["name"].isin(launched)]
    started = rows[rows["state"].isin({S.RUNNING, *ENDED})]
    follow = started.loc[started["state"].isin({S.RUNNING, S.SUCCESS}), "id"].tolist()
    return follow, set(started["name"])


def auto_picks(picked: list[str], started: list[str]) -> list[str]:
    """`picked` and the newly started experiments after them, up to MAX_AUTO_PICKS picks."""
    room = max(0, MAX_AUTO_PICKS - len(picked))
    return picked + [rev for rev in started if rev not in picked][:room]


def active_baselines(frame: pd.DataFrame) -> set[str]:
    """The baseline commits of queued and running experiments."""
    active = frame[frame["state"].isin(ACTIVE) & frame["parent"].notna()]
    return set(active["parent"])


def running_roots(frame: pd.DataFrame) -> dict[str, str]:
    """{id: the folder its queue task runs in} of the running experiments."""
    running = frame[(frame["state"] == S.RUNNING) & frame["root"].notna()]
    return dict(zip(running["id"], running["root"], strict=True))


# ----- the table -----------------------------------------------------------------------------
def column_options(frame: pd.DataFrame) -> list[str]:
    """Every column a person may choose, in the picker's order: name and state, the key
    metrics, the time created, then params, the other metrics and the deps."""
    attrs = frame.attrs
    keys = key_metrics(frame)
    metrics = [m for m in attrs.get("metrics", []) if m not in keys]
    return [
        *SHOWN_BEFORE_KEYS,
        *keys,
        *SHOWN_AFTER_KEYS,
        *attrs.get("params", []),
        *metrics,
        *attrs.get("deps", []),
    ]


def default_columns(frame: pd.DataFrame) -> list[str]:
    """The columns shown until a person chooses: all but the deps and the interval ends (the
    key metrics' cells show their intervals)."""
    metrics = frame.attrs.get("metrics", [])
    deps = set(frame.attrs.get("deps", []))
    return [c for c in column_options(frame) if c not in deps and not is_interval_end(c, metrics)]


def visible_rows(state: DashboardState) -> pd.DataFrame:
    """The rows shown: filtered, then sorted (across the whole table). FilterError when the
    filter cannot be read."""
    rows = filter_experiments(state.frame, state.filter)
    sort = state.sort or {}
    return sort_frame(rows, sort.get("column"), bool(sort.get("descending")))


def visible_columns(state: DashboardState, rows: pd.DataFrame | None = None) -> list[str]:
    """The chosen columns (the default set when none are chosen). With "only columns that
    differ", those whose values differ among `rows` (the rows shown, or all rows when fewer
    than two are shown), but never the fixed columns, the key metrics, nor a column that only
    one row has a value in (the workspace's metrics right after `make demo`)."""
    frame = state.frame
    options = column_options(frame)
    chosen_set = set(state.columns) or set(default_columns(frame))
    chosen = [c for c in options if c in chosen_set and c in frame]
    if not state.only_differing or len(frame) < 2:
        return chosen
    rows = frame if rows is None or len(rows) < 2 else rows
    kept = set(SHOWN_FIXED) | set(key_metrics(frame))
    candidates = [c for c in chosen if c not in kept]
    varying = set(differing_columns(rows, candidates))
    single = {c for c in candidates if rows[c].map(_has_value).sum() == 1}
    return [c for c in chosen if c in kept or c in varying or c in single]


def _has_value(value: Any) -> bool:
    return format_cell(value) != ""


def row_thumbnails(images: pd.DataFrame) -> dict[str, str]:
    """{id: its first LoRA image} (first prompt, first seed) of the rows whose images are read:
    a small picture in the table tells the runs apart."""
    lora = images[images["kind"] == "lora"].sort_values(["rev", "prompt", "seed"])
    first = lora.drop_duplicates("rev")
    return dict(zip(first["rev"], first["file"], strict=True))


@dataclass
class TableModel:
    """What the table widget draws (dashboard.widgets.ExperimentTable's traits)."""

    header: list[dict[str, Any]]
    cells: list[list[str]]
    row_info: list[dict[str, Any]]
    order: list[int]  # positions in `cells` of the rows shown, in order
    marks: dict[str, str]  # "row,column" -> changed or best
    picked: list[str]
    colors: dict[str, str]
    empty_text: str
    filter_error: str = ""
    columns: list[str] = field(default_factory=list)
    thumbs: dict[int, str] = field(default_factory=dict)  # row position -> its image file


def column_texts(frame: pd.DataFrame, column: str) -> list[str]:
    """A column's cells as the table shows them; a metric with an interval (`<metric>_low`,
    `<metric>_high`) as `value [low, high]`."""
    texts = [format_cell(v) for v in frame[column]]
    ends = [f"{column}{end}" for end in INTERVAL_ENDS]
    if all(end in frame for end in ends):
        low, high = (pd.to_numeric(frame[end], errors="coerce") for end in ends)
        for i, (text, a, b) in enumerate(zip(texts, low, high, strict=True)):
            if text and pd.notna(a) and pd.notna(b):
                texts[i] = f"{text} [{interval_end(a)}, {interval_end(b)}]"
    return texts


def table_model(state: DashboardState) -> TableModel:
    """The table as the filter, sort and column choices say: changed params marked against the
    baseline, the best value of each metric starred among the finished rows shown, the key
    metrics with their intervals."""
    frame = state.frame
    filter_error = ""
    try:
        rows = visible_rows(state)
    except FilterError as error:
        filter_error = str(error)
        rows = frame
    columns = visible_columns(state, rows)
    metrics = set(frame.attrs.get("metrics", []))
    groups = {c: "param" for c in frame.attrs.get("params", [])}
    groups.update({c: "metric" for c in metrics})
    groups.update({c: "dep" for c in frame.attrs.get("deps", [])})
    header = [
        {
            "name": c,
            "label": c.removeprefix("dep:"),
            "group": groups.get(c, "fixed"),
            "numeric": bool(c in metrics or pd.api.types.is_numeric_dtype(frame[c])),
        }
        for c in columns
    ]
    position = {c: i for i, c in enumerate(columns)}
    marks = {}
    for index, rev in enumerate(frame["id"]):
        for param in state.changed.get(rev, {}):
            if param in position:
                marks[f"{index},{position[param]}"] = "changed"
    ids = {rev: i for i, rev in enumerate(frame["id"])}
    finished = rows[~rows["state"].isin(UNFINISHED)]  # a run's metrics so far are no record
    for metric, revs in best_rows(finished, [c for c in columns if c in metrics]).items():
        for rev in revs:
            marks[f"{ids[rev]},{position[metric]}"] = "best"
    texts = [column_texts(frame, c) for c in columns]
    cells = [list(row) for row in zip(*texts, strict=True)] if columns else [[] for _ in ids]
    info = [
        {
            "id": r.id,
            "name": r.name,
            "kind": r.kind,
            "state": str(r.state),
            "error": r.error or "",
            "pickable": r.state not in NOT_PICKABLE,
        }
        for r in frame[["id", "name", "kind", "state", "error"]].itertuples(index=False)
    ]
    picked = list(state.picked)
    return TableModel(
        header=header,
        cells=cells,
        row_info=info,
        order=[ids[rev] for rev in rows["id"]],
        marks=marks,
        picked=picked,
        colors=colors(picked),
        empty_text="No experiment matches the filter." if len(frame) else EMPTY_TABLE,
        filter_error=filter_error,
        columns=columns,
        thumbs={ids[rev]: file for rev, file in state.thumbs.items() if rev in ids},
    )


def filter_message(error: str) -> str:
    """The filter's error as the page says it ("" when there is none)."""
    if not error:
        return ""
    return (
        f"<span class='filter-error' style='color:#cf222e'>{html.escape(error)}. "
        "Use column names as shown, e.g. <code>train_lora.rank &gt;= 8</code>, "
        '<code>state == "failed"</code>.</span>'
    )


def count_html(state: DashboardState, shown: int) -> str:
    """The count of experiments by state and of the rows shown; each failed experiment with
    its error and, when read, the tail of its log."""
    frame = state.frame
    experiments = frame[frame["kind"] == "experiment"]
    states = experiments["state"].map(str).value_counts().to_dict()
    detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    text = (
        f"<span class='experiment-count' data-experiments='{len(experiments)}' "
        f"data-shown='{shown}'><b>{len(experiments)} experiments</b>"
        f"{f' ({detail})' if detail else ''} · {shown} of {len(frame)} rows shown</span>"
    )
    if experiments.empty:
        text += (
            " · <i>No experiments yet: make one with <code>dvc exp run -S "
            "train_lora.rank=8</code> (see the README).</i>"
        )
    failed = experiments[experiments["state"].isin({S.FAILED, S.LOST})]
    for row in failed.itertuples():
        log_tail = ""
        if row.name in state.failure_logs:
            log_tail = (
                "<details><summary>its log (dvc queue logs)</summary><pre>"
                f"{html.escape(state.failure_logs[row.name])}</pre></details>"
            )
        text += (
            f"<div class='failed-experiment' style='color:#cf222e'>✖ {html.escape(row.name)}"
            f" {row.state}: {html.escape(row.error or 'no error message from DVC')}{log_tail}"
            "</div>"
        )
    return text


# ----- the comparison ------------------------------------------------------------------------
def metric_detail(frame: pd.DataFrame, rev: str, kind: str = "lora") -> str:
    """`<key metric> <value> [interval]` of a row ("" when it has none); for the base model's
    images, the base's figure (type_fidelity_base for type_fidelity_lora)."""
    row = frame[frame["id"] == rev]
    metric = key_metric(frame)
    if metric and kind == "base" and metric.endswith("_lora"):
        base_metric = metric.removesuffix("_lora") + "_base"
        metric = base_metric if base_metric in frame else metric
    if metric and not row.empty and pd.notna(pd.to_numeric(row.iloc[0][metric], errors="coerce")):
        return f"{metric} {format_cell(row.iloc[0][metric])}{interval(row.iloc[0], metric)}"
    return ""


def column_detail(state: DashboardState, rev: str, kind: str = "lora") -> str:
    """What an experiment changed from its baseline, and its key metric."""
    params = state.frame.attrs.get("params", [])
    changed = state.changed.get(rev, {})
    parts = [f"{short_name(p, params)}={format_cell(v)}" for p, v in changed.items()]
    parts += [metric_detail(state.frame, rev, kind)]
    return " · ".join(part for part in parts if part) or "baseline params"


@dataclass
class GalleryModel:
    """The gallery: `columns` [{key, label, detail, color, rev, kind}], `rows` [{label, cells:
    [{key, file, title} or {missing: reason}]}] (the panel turns files into images)."""

    columns: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    empty_text: str


KIND_NAMES = {"lora": "LoRA", "base": "base"}
GONE = "not in the table (removed, or not read yet)"


def gallery_model(
    state: DashboardState,
    digest: Callable[[str | None], str | None],
    inside: Callable[[str], Any],
) -> GalleryModel:
    """The picked experiments' images, a column per experiment and kind (base, LoRA) and a
    row per prompt and seed; one base column for experiments whose base images are the same
    (`digest(file)`: a hash of its bytes). `inside(file)` checks a file (the store's check:
    it raises for a file outside the repository, which becomes the cell's reason)."""
    plots, mode, picked = state.plots, state.gallery_mode, state.picked
    kinds = ["base", "lora"] if mode == "both" else [mode]
    names, shades = labels(state.frame, picked), colors(picked)
    columns = [
        {
            "key": f"{rev}:{kind}",
            "label": f"{names[rev]} · {KIND_NAMES[kind]}",
            "detail": column_detail(state, rev, kind),
            "color": shades.get(rev),
            "rev": rev,
            "kind": kind,
        }
        for rev in picked
        for kind in kinds
    ]
    images = plots.images
    keys = list(images[["prompt", "seed"]].drop_duplicates().itertuples(index=False))
    lookup = {(r.rev, r.kind, r.prompt, r.seed): r.file for r in images.itertuples()}
    columns = one_column_per_base(state.frame, columns, lookup, keys, digest)
    rows = []
    for prompt, seed in keys:
        cells = []
        for column in columns:
            file = lookup.get((column["rev"], column["kind"], prompt, seed))
            if file is None:
                absent = f"this experiment has no image for '{prompt}', seed {seed}"
                cells.append({"missing": plots.missing.get(column["rev"], absent)})
                continue
            try:
                checked = inside(file)
            except Exception as error:  # the store's DvcError: a file outside the repository
                cells.append({"missing": str(error)})
                continue
            key = f"{column['key']}:{prompt}:{seed}"
            title = f"{column['label']} — {prompt}, seed {seed}"
            cells.append({"key": key, "file": str(checked), "title": title})
        rows.append({"label": f"{prompt} · seed {seed}", "cells": cells})
    if not picked:
        empty = "Pick experiments in the table to see their Pokémon."
    else:
        known = set(state.frame["id"])
        reasons = {rev: GONE for rev in picked if rev not in known} | plots.missing
        empty = "No generated images for the picked experiments: " + "; ".join(
            f"{names.get(r, r)}: {m}" for r, m in reasons.items()
        )
    return GalleryModel(columns if rows else [], rows, empty)


def one_column_per_base(
    frame: pd.DataFrame,
    columns: list[dict],
    lookup: Mapping[tuple, str],
    keys: list,
    digest: Callable[[str | None], str | None],
) -> list[dict]:
    """The base model's images once when picked experiments share them (same base model,
    prompts and seeds: the usual case), so that their LoRA columns sit side by side."""
    kept, first_of = [], {}
    for column in columns:
        if column["kind"] == "base":
            files = [lookup.get((column["rev"], "base", *key)) for key in keys]
            content = tuple(digest(file) for file in files)
            if any(content) and content in first_of:
                first_of[content]["same"].append(column["label"].removesuffix(" · base"))
                continue
            first_of[content] = column
            column["same"] = []
        kept.append(column)
    for column in first_of.values():
        if column["same"]:
            parts = [
                f"the same for {', '.join(column['same'])}",
                metric_detail(frame, column["rev"], "base"),
            ]
            column["detail"] = " · ".join(part for part in parts if part)
        del column["same"]
    return kept


def curve_choice(curves: Iterable[str], current: str | None) -> tuple[list[str], str | None]:
    """The curves to choose from and the one shown: the current one, else the LoRA's loss."""
    options = sorted(curves)
    if current in options:
        return options, current
    preferred = next((c for c in options if PREFERRED_CURVE in c), options[0] if options else None)
    return options, preferred


def curve_title(path: str) -> str:
    return path.removeprefix("outputs/").replace("/plots/metrics/", ": ")


def no_curves_text(state: DashboardState) -> str:
    if not state.picked:
        return "Pick experiments in the table to see their curves."
    names = labels(state.frame, state.picked)
    reasons = "; ".join(f"{names.get(r, r)}: {m}" for r, m in state.plots.missing.items())
    return f"The picked experiments have no curves ({reasons})."


def axis_choices(frame: pd.DataFrame) -> tuple[list[str], str | None, list[str], str | None]:
    """The params and metrics of the metric-against-param plots, and the preferred of each:
    the params that vary (numeric ones; all numeric params when none vary)."""
    params = frame.attrs.get("params", [])
    numeric = [p for p in params if pd.to_numeric(frame[p], errors="coerce").notna().any()]
    differing = differing_columns(frame, numeric) or numeric
    x = next((p for p in PREFERRED_X if p in differing), differing[0] if differing else None)
    return differing, x, frame.attrs.get("metrics", []), key_metric(frame)


def overview_rows(state: DashboardState) -> pd.DataFrame:
    """The rows of the metric-against-param plots: the filtered ones (all when the filter is
    wrong), without the workspace unless it is the only row."""
    try:
        rows = filter_experiments(state.frame, state.filter)
    except FilterError:
        rows = state.frame
    return rows[rows["kind"] != "workspace"] if len(rows) > 1 else rows


# ----- the queue and the actions -------------------------------------------------------------
@dataclass
class QueueSummary:
    counts: dict[str, int]
    html: str
    log_names: list[str]  # experiments of the queue, whose logs can be read


def queue_summary(frame: pd.DataFrame) -> QueueSummary:
    """Queue state from the table (executor states of `dvc exp show`)."""
    queued = frame[frame["state"].isin({*ACTIVE, *ENDED}) & (frame["kind"] == "experiment")]
    states = queued["state"].map(str).value_counts().to_dict()
    # succeeded through the queue: DVC keeps the task's process info (a pid) for those
    states["succeeded"] = int(((queued["state"] == S.SUCCESS) & queued["pid"].notna()).sum())
    parts = [
        f"{states.get(s, 0)} {s}"
        for s in (S.QUEUED, S.RUNNING, "succeeded", S.FAILED, S.LOST)
        if s != S.LOST or states.get(s)
    ]
    if states.get(S.QUEUED) and not states.get(S.RUNNING):
        parts.append("none running: start the queue to run the queued ones")
    queued_count, running_count = states.get(S.QUEUED, 0), states.get(S.RUNNING, 0)
    text = (
        f"<span class='queue-counts' data-queued='{queued_count}' "
        f"data-running='{running_count}'>Queue: {', '.join(parts)}</span>"
    )
    names = [n for n in queued["name"] if isinstance(n, str)]
    return QueueSummary(states, text, names)


def failed_names(frame: pd.DataFrame, log_names: Iterable[str]) -> list[str]:
    """Failed or lost experiments of the queue (whose log the count shows)."""
    logs = set(log_names)
    failed = frame[(frame["kind"] == "experiment") & frame["state"].isin({S.FAILED, S.LOST})]
    return [name for name in failed["name"] if name in logs]


def picked_rows(
    frame: pd.DataFrame, picked: list[str], states: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The picked experiments (not baselines or the workspace), as records."""
    rows = frame[frame["id"].isin(picked) & (frame["kind"] == "experiment")]
    if states:
        rows = rows[rows["state"].isin(set(states))]
    return rows.to_dict("records")


def apply_preview(frame: pd.DataFrame, row: Mapping[str, Any]) -> list[str]:
    """The params that applying `row` changes in the workspace, as 'key: old → new'."""
    workspace = frame[frame["kind"] == "workspace"]
    if workspace.empty:
        return []
    current = workspace.iloc[0]
    changes = []
    for param in frame.attrs.get("params", []):
        new, old = row.get(param), current[param]
        if format_cell(new) != format_cell(old):
            changes.append(f"{param}: {format_cell(old)} → {format_cell(new)}")
    return changes
