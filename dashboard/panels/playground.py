"""The prompt playground, a tab beside the table: a prompt (and a negative prompt), seeds, steps,
guidance, scheduler and the LoRA scale; Draw renders it with the base and the picked
experiments' LoRAs from the same noise per seed, the images appearing as the worker sends them.
Side by side, a strip of scales of one LoRA, or a blend of two. "Keep as experiment" queues the
finding as a DVC experiment. The panel draws what it is handed (dashboard.playground.views) and
sends the commands of dashboard.playground.commands.Playground."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import ipywidgets as w

from dashboard.panels import Panel, button, set_options
from dashboard.playground.views import seed_text
from dashboard.state import PlaygroundState
from dashboard.widgets import Gallery
from stages.common.params import SCHEDULERS

MODES = [("Side by side", "side"), ("Scale strip", "strip"), ("Blend", "blend")]


class PlaygroundCommands(Protocol):
    def set_fields(self, **changes: Any) -> None: ...
    def draw(self) -> None: ...
    def cancel(self) -> None: ...
    def keep(self) -> None: ...


class PlaygroundPanel(Panel):
    def __init__(self, commands: PlaygroundCommands, perform: Callable[..., bool]):
        super().__init__()

        def run(action: Callable[[], None], name: str) -> Callable[[], None]:
            return lambda: perform(action, name)

        def field(widget: w.Widget, name: str) -> w.Widget:
            self.on_change(
                widget, run(lambda: commands.set_fields(**{name: widget.value}), "set " + name)
            )
            return widget

        wide = w.Layout(width="100%")
        self.prompt = field(
            w.Text(
                description="Prompt",
                placeholder="a pkmnlora pokemon with a flame tail",
                layout=wide,
            ),
            "prompt",
        )
        self.negative = field(
            w.Text(description="Negative", placeholder="what to keep out (optional)", layout=wide),
            "negative_prompt",
        )
        small = {"style": {"description_width": "initial"}}
        self.seeds = field(
            w.Text(
                description="Seeds",
                placeholder="0-3 or 0, 5, 9",
                layout=w.Layout(width="170px"),
                **small,
            ),
            "seeds",
        )
        self.count = w.BoundedIntText(
            value=4, min=1, max=64, description="count", layout=w.Layout(width="110px"), **small
        )
        self.on_change(
            self.count,
            run(lambda: commands.set_fields(seeds=seed_text(self.count.value)), "set seeds"),
        )
        self.steps = field(
            w.BoundedIntText(
                value=25,
                min=1,
                max=200,
                description="Steps",
                layout=w.Layout(width="120px"),
                **small,
            ),
            "num_inference_steps",
        )
        self.guidance = field(
            w.BoundedFloatText(
                value=4.0,
                min=0,
                max=50,
                step=0.5,
                description="Guidance",
                layout=w.Layout(width="140px"),
                **small,
            ),
            "guidance_scale",
        )
        self.scheduler = field(
            w.Dropdown(
                options=SCHEDULERS, description="Sampler", layout=w.Layout(width="160px"), **small
            ),
            "scheduler",
        )
        self.mode = field(
            w.ToggleButtons(options=MODES, value="side", style={"button_width": "auto"}), "mode"
        )
        self.scale = w.FloatSlider(
            value=1.0,
            min=0,
            max=4,
            step=0.05,
            description="LoRA scale",
            continuous_update=False,
            readout_format=".2f",
            **small,
        )
        # a new scale redraws at once (the worker keeps the LoRAs: seconds)
        self.on_change(
            self.scale,
            run(lambda: self._scale_changed(commands), "set the LoRA scale"),
        )
        self.strip = field(
            w.Text(
                description="Scales",
                placeholder="0, 0.5, 1, 1.5",
                layout=w.Layout(width="240px"),
                **small,
            ),
            "strip",
        )
        self.weights = field(
            w.Text(
                description="Weights",
                placeholder="0.5, 0.5",
                layout=w.Layout(width="200px"),
                **small,
            ),
            "weights",
        )
        self.draw_button = button(
            "Draw",
            "paint-brush",
            "Draw the prompt with the base and the picked LoRAs",
            run(commands.draw, "draw"),
            button_style="primary",
        )
        self.cancel_button = button(
            "Cancel draw", "stop", "Stop the draw that runs", run(commands.cancel, "cancel")
        )
        self.keep_button = button(
            "Keep as experiment",
            "save",
            "Queue a DVC experiment that draws this prompt with the first picked LoRA",
            run(commands.keep, "keep as experiment"),
        )
        self.worker = w.HTML()
        self.progress = w.HTML()
        self.gallery = Gallery()
        self.gallery.add_class("playground-gallery")
        self.by_mode = w.HBox()
        self.widget = w.VBox(
            [
                self.prompt,
                self.negative,
                w.HBox(
                    [self.seeds, self.count, self.steps, self.guidance, self.scheduler],
                    layout=w.Layout(flex_flow="row wrap"),
                ),
                w.HBox([self.mode, self.by_mode], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.draw_button, self.cancel_button, self.keep_button]),
                self.worker,
                self.progress,
                self.gallery,
            ]
        )
        self.widget.add_class("playground-panel")
        self._drawn = False

    def _scale_changed(self, commands: PlaygroundCommands) -> None:
        commands.set_fields(scale=self.scale.value)
        if self._drawn:
            commands.draw()

    def render(
        self, form: PlaygroundState, gallery: dict, worker_html: str, progress_html: str
    ) -> None:
        with self.rendering(), self.gallery.hold_sync():
            for widget, value in (
                (self.prompt, form.prompt),
                (self.negative, form.negative_prompt),
                (self.seeds, form.seeds),
                (self.steps, form.num_inference_steps),
                (self.guidance, form.guidance_scale),
                (self.scale, form.scale),
                (self.mode, form.mode),
                (self.strip, form.strip),
                (self.weights, form.weights),
            ):
                if widget.value != value:
                    widget.value = value
            set_options(self.scheduler, list(SCHEDULERS), form.scheduler)
            shown = {"side": [self.scale], "strip": [self.strip], "blend": [self.weights]}
            if list(self.by_mode.children) != shown[form.mode]:
                self.by_mode.children = shown[form.mode]
            self.worker.value = worker_html
            self.progress.value = progress_html
            self.gallery.images = gallery["images"]
            self.gallery.columns = gallery["columns"]
            # base and two LoRAs fit in the pane at 1400 px; more columns scroll sideways
            count = len(gallery["columns"])
            self.gallery.thumb_size = 112 if count <= 3 else 96 if count == 4 else 80
            self.gallery.rows = gallery["rows"]
            self.gallery.empty_text = gallery["empty_text"]
            self._drawn = form.request is not None
