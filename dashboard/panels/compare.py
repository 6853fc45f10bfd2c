"""The picked experiments compared, in tabs beside the table: their generated Pokémon, their
training curves, a metric against a param over all experiments, and their classifiers'
confusion matrices. Each panel draws figures (dashboard.plots) or images from what the
controller hands it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from dashboard import plots
from dashboard.panels import Panel, set_options
from dashboard.views import GalleryModel
from dashboard.widgets import Gallery, thumbnail

CONFIG = {"displaylogo": False, "responsive": True}
THUMB = 256  # pixels: the longest side of a gallery image as sent to the page


class PlotBox(w.Output):
    """An Output widget that shows one plotly figure; `show()` replaces it (from any thread:
    it sets the widget's outputs, no capture context needed). While `held`, the figure waits
    for `release()`: drawing plots costs the browser seconds, so the page draws its table first.
    """

    def __init__(self, held: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.held, self.figure, self.pending = held, None, None

    def release(self) -> None:
        self.held = False
        if self.pending is not None:
            self.show(self.pending)

    def show(self, figure: go.Figure) -> None:
        if self.held:
            self.pending = figure
            return
        self.pending = None
        spec = json.loads(figure.to_json())
        bundle = {
            "application/vnd.plotly.v1+json": {**spec, "config": CONFIG},
            "text/plain": f"<plotly figure: {figure.layout.title.text or ''}>",
        }
        self.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
        self.figure = figure


class GalleryPanel(Panel):
    """Base and LoRA images of the picked experiments, a column each, a row per prompt and
    seed; a click on an image shows it enlarged."""

    def __init__(self, set_mode: Callable[[str], None]):
        super().__init__()
        self.mode = w.ToggleButtons(
            options=[("Base and LoRA", "both"), ("LoRA", "lora"), ("Base", "base")],
            value="both",
            style={"button_width": "auto"},  # one line beside the table
        )
        self.on_change(self.mode, lambda: set_mode(self.mode.value))
        self.gallery = Gallery()
        self.widget = w.VBox([self.mode, self.gallery])
        self.widget.add_class("pokemon-panel")

    def render(self, model: GalleryModel, mode: str) -> None:
        files, rows = {}, []
        for row in model.rows:
            cells = []
            for cell in row["cells"]:
                if "file" not in cell:
                    cells.append(cell)
                    continue
                try:
                    src = thumbnail(cell["file"], THUMB)
                except OSError as error:
                    cells.append({"missing": f"cannot read the image: {error}"})
                    continue
                files[cell["key"]] = Path(cell["file"])
                cells.append({"key": cell["key"], "src": src, "title": cell["title"]})
            rows.append({"label": row["label"], "cells": cells})
        with self.rendering(), self.gallery.hold_sync():
            self.mode.value = mode
            self.gallery.files = files
            self.gallery.columns = model.columns
            # base and two LoRAs fit beside the table at 1400 px; more columns scroll sideways
            self.gallery.thumb_size = 128 if len(model.columns) <= 2 else 100
            self.gallery.rows = rows
            self.gallery.empty_text = model.empty_text


class CurvesPanel(Panel):
    """The training curves of the picked experiments, one curve file at a time."""

    def __init__(self, set_view: Callable[..., None], held: bool):
        super().__init__()
        self.choice = w.Dropdown(description="Curve", layout=w.Layout(width="420px"))
        self.on_change(self.choice, lambda: set_view(curve=self.choice.value))
        self.smoothing = w.FloatSlider(
            value=0.8,
            min=0,
            max=0.99,
            step=0.01,
            description="Smoothing",
            continuous_update=False,
        )
        self.on_change(self.smoothing, lambda: set_view(smoothing=self.smoothing.value))
        self.plot = PlotBox(held=held)
        self.widget = w.VBox([w.HBox([self.choice, self.smoothing]), self.plot])
        self.widget.add_class("curves-panel")

    def render(
        self,
        options: list[str],
        curve: str | None,
        points: pd.DataFrame | None,
        labels: Mapping[str, str],
        colors: Mapping[str, str],
        smoothing: float,
        title: str,
        empty_text: str,
    ) -> None:
        with self.rendering():
            set_options(self.choice, options, curve)
            self.smoothing.value = smoothing
        if points is None:
            self.plot.show(plots.empty_figure(empty_text))
        else:
            self.plot.show(plots.curves_figure(points, labels, colors, title, smoothing))


class OverviewPanel(Panel):
    """A metric against a param over every experiment shown (the picked in their colours),
    and parallel coordinates of the params that vary."""

    def __init__(self, set_view: Callable[..., None], held: bool):
        super().__init__()
        self.x_choice = w.Dropdown(description="Param", layout=w.Layout(width="320px"))
        self.y_choice = w.Dropdown(description="Metric", layout=w.Layout(width="320px"))
        self.on_change(self.x_choice, lambda: set_view(x=self.x_choice.value))
        self.on_change(self.y_choice, lambda: set_view(y=self.y_choice.value))
        self.scatter = PlotBox(held=held)
        self.parallel = PlotBox(held=held)
        self.widget = w.VBox([w.HBox([self.x_choice, self.y_choice]), self.scatter, self.parallel])
        self.widget.add_class("overview-panel")

    def render(
        self,
        rows: pd.DataFrame,
        axes: tuple[list[str], str | None, list[str], str | None],
        colors: Mapping[str, str],
        parallel: bool = True,
    ) -> None:
        x_options, x, y_options, y = axes
        with self.rendering():
            set_options(self.x_choice, x_options, x)
            set_options(self.y_choice, y_options, y)
        if x is None or y is None:
            message = "Run experiments that change a param to compare them here."
            self.scatter.show(plots.empty_figure(message))
            self.parallel.show(plots.empty_figure(message))
            return
        self.scatter.show(plots.scatter_figure(rows, x, y, colors))
        if parallel:
            params = [p for p in x_options if p != y][:8]
            self.parallel.show(plots.parallel_figure(rows, params, y))


class ClassifierPanel(Panel):
    """The picked experiments' classifier confusion matrices side by side."""

    def __init__(self, held: bool):
        super().__init__()
        self.confusion = PlotBox(held=held)
        self.widget = w.VBox([self.confusion])
        self.widget.add_class("classifier-panel")

    def render(self, matrices: Mapping[str, Any], labels: Mapping[str, str]) -> None:
        self.confusion.show(plots.confusion_figure(matrices, labels))
