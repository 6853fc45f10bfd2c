"""The dashboard's one state: what the page shows, as plain data (no widgets). The controller
(dashboard.app.Dashboard) owns it; it and the commands it hands the panels (dashboard.commands)
change it; the view models (dashboard.views) turn it into what each panel draws; the panels
only render and send commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dashboard.data import FIXED_COLUMNS, ExperimentState
from dashboard.store import Plots

S = ExperimentState  # the states, from dashboard.data where they are read
# Rows whose metrics are no record yet (a run's figures so far) or none at all.
UNFINISHED = frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.LOST})
ACTIVE = frozenset({S.QUEUED, S.RUNNING})  # the queue is busy while a row is in one of these
ENDED = frozenset({S.SUCCESS, S.FAILED, S.LOST})
NOT_PICKABLE = frozenset({S.QUEUED})  # nothing to compare yet; a running one has curves so far
PLAYGROUND_MODES = ("side", "strip", "blend")  # side by side, a strip of scales, a blend


@dataclass
class PlaygroundState:
    """The prompt playground: its fields as typed (texts parsed by dashboard.playground.views),
    the worker's ready event (what it runs on) or why it is not there, and the last draw as it
    arrives: the request sent, its column labels, the images so far by (column, seed), the
    columns that failed, and how it ended (None while it draws)."""

    prompt: str = "a pkmnlora pokemon with a flame tail"
    negative_prompt: str = ""
    seeds: str = "0-3"  # a list and ranges: "0, 5, 9" or "0-3"
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    scheduler: str = "dpm++"
    scale: float = 1.0  # of every LoRA column side by side
    mode: str = "side"  # PLAYGROUND_MODES
    strip: str = "0, 0.5, 1, 1.5"  # the scales of the strip (of the first picked LoRA)
    weights: str = "0.5, 0.5"  # of the blend of the first two picked LoRAs
    defaults_from: str | None = None  # the row whose generate params filled the fields
    worker: dict[str, Any] | None = None  # the ready event: base, device, dtype, threads
    worker_error: str = ""
    request: Any = None  # the DrawRequest of the last draw
    column_labels: list[str] = field(default_factory=list)
    column_details: list[str] = field(default_factory=list)
    column_colors: list[str | None] = field(default_factory=list)
    images: dict[tuple[int, int], bytes] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    outcome: str | None = None  # finished, cancelled, rejected, worker_gone
    outcome_text: str = ""
    seconds: float | None = None  # from the click to the last image
    notes: list[str] = field(default_factory=list)  # what the draw left out, and why


@dataclass
class DashboardState:
    """Everything the page shows. `picked` are row ids in the order compared; `columns` the
    columns chosen in the picker (empty: the default set); `sort` {column, descending}."""

    frame: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FIXED_COLUMNS))
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> changed params
    picked: list[str] = field(default_factory=list)
    filter: str = ""
    sort: dict[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    only_differing: bool = True
    all_commits: bool = False
    plots: Plots = field(default_factory=Plots)  # of the picked
    thumbs: dict[str, str] = field(default_factory=dict)  # id -> a LoRA image read (checked)
    gallery_mode: str = "both"  # both, lora, base
    curve: str | None = None  # the curve file shown
    smoothing: float = 0.8
    x: str | None = None  # param and metric of the metric-against-param plots
    y: str | None = None
    launched: set[str] = field(default_factory=set)  # names queued here, not started yet
    failure_logs: dict[str, str] = field(default_factory=dict)  # name -> tail of its log
    error: str = ""  # the banner's message (reading, comparing)
    message: str = ""  # the status line: what the last action did
    message_error: bool = False
    question: str | None = None  # a destructive action's question, HTML
    can_confirm: bool = False  # False while git and dvc find out what the question says
    working: bool = False  # an apply or undo runs dvc (Cancel shown)
    log_html: str = ""  # the queue log asked for, or a failed workspace run's
    remotes: list[str] = field(default_factory=list)
    can_undo: bool = False
    read_seconds: float = 0.0
    playground: PlaygroundState = field(default_factory=PlaygroundState)
