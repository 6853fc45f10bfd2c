"""The prompt playground's commands, apart from the controller (dashboard.app.Dashboard) and the
pane (dashboard.panels.playground): Draw, Cancel and "Keep as experiment", and the one client of
the generation worker (dashboard.playground.client) that this page talks to.

The worker's events arrive on the client's reader thread: `_event` changes the playground's
state under its own lock (never the controller's, which a long refresh holds) and asks the
controller to redraw the pane, at most every RENDER_EVERY seconds while images stream in."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from dashboard import actions, commands
from dashboard.commands import Launcher
from dashboard.playground import views
from dashboard.playground.client import PlaygroundClient
from dashboard.state import PLAYGROUND_MODES
from stages.common import paths

RENDER_EVERY = 0.15  # seconds between two redraws of the pane while images arrive
FIELDS = {
    "prompt": str,
    "negative_prompt": str,
    "seeds": str,
    "num_inference_steps": int,
    "guidance_scale": float,
    "scheduler": str,
    "scale": float,
    "mode": str,
    "strip": str,
    "weights": str,
}


NO_BASE = (
    f"no base model yet ({paths.BASE_MODEL_RECORD} is missing): run the pipeline "
    "(`dvc repro`, or `make demo`), then Draw"
)


def has_base_model(repo: Path) -> bool:
    """Whether set_up_diffusers has recorded the base model the worker loads."""
    return (Path(repo) / paths.BASE_MODEL_RECORD).is_file()


class Controller(commands.Controller, Protocol):
    """What the playground needs of the controller: what the experiment commands need, its
    pane's render, and the launcher that queues a kept experiment."""

    launcher: Launcher

    def render_playground(self) -> None: ...

    @property
    def launcher(self) -> Launcher: ...


class Playground:
    """Draw the fields' prompt with the base and the picked LoRAs, cancel, keep."""

    def __init__(self, controller: Controller, client: PlaygroundClient | None = None):
        self.controller = controller
        self.client = client or PlaygroundClient(controller.repo)
        self.lock = threading.RLock()  # the playground's state, against the reader thread
        self._current: object | None = None  # the token of the draw whose events count
        self._started = 0.0
        self._rendered = 0.0

    @property
    def form(self):
        return self.controller.state.playground

    def start(self) -> None:
        """Connect to the worker (start it if none runs) without holding the page; not before
        the pipeline has set up a base model (a Draw tries again)."""
        if not has_base_model(self.controller.repo):
            with self.lock:
                self.form.worker_error = NO_BASE
            self.controller.render_playground()
            return
        self.client.connect_in_background(self._connected)

    def _connected(self, result: dict | Exception) -> None:
        with self.lock:
            if isinstance(result, Exception):
                self.form.worker, self.form.worker_error = None, str(result)
            else:
                self.form.worker, self.form.worker_error = result, ""
        self.controller.render_playground()

    def set_fields(self, **changes: Any) -> None:
        unknown = set(changes) - FIELDS.keys()
        if unknown:
            raise TypeError(f"not a playground field: {', '.join(sorted(unknown))}")
        if changes.get("mode", PLAYGROUND_MODES[0]) not in PLAYGROUND_MODES:
            raise ValueError(f"mode must be one of {', '.join(PLAYGROUND_MODES)}")
        with self.lock:
            for name, value in changes.items():
                setattr(self.form, name, FIELDS[name](value))

    def draw(self) -> None:
        """Send the fields' draw (it replaces, and cancels, the one drawing)."""
        form, state = self.form, self.controller.state
        columns = views.draw_columns(form, state)
        request = views.draw_request(form, columns)
        token = object()
        with self.lock:
            self._current, self._started = token, time.perf_counter()
            form.request, form.notes = request, columns.notes
            form.column_labels, form.column_details = columns.labels, columns.details
            form.column_colors = columns.colors
            form.images, form.errors = {}, {}
            form.outcome, form.outcome_text, form.seconds = None, "", None
        self.controller.render_playground()
        self.client.draw(request, on_event=lambda event: self._event(token, event))

    def cancel(self) -> None:
        self.client.cancel()

    def _event(self, token: object, event: dict[str, Any]) -> None:
        """One event of a draw, on the client's reader thread; those of a replaced draw are
        dropped."""
        kind = event.get("type")
        with self.lock:
            if token is not self._current:
                return
            form = self.form
            if kind == "image":
                png = event["png"]
                png = base64.b64decode(png) if isinstance(png, str) else png
                form.images[(int(event["column"]), int(event["seed"]))] = png
                form.seconds = time.perf_counter() - self._started
            elif kind == "column_failed":
                form.errors[int(event["column"])] = str(event["message"])
            elif kind in {"finished", "cancelled", "rejected", "worker_gone"}:
                form.outcome = kind
                form.outcome_text = _ended_text(kind, event)
                if kind == "worker_gone":
                    form.worker, form.worker_error = None, _ended_text(kind, event)
                elif self.client.ready:
                    form.worker, form.worker_error = self.client.ready, ""
            else:
                return
            final = form.outcome is not None
            now = time.perf_counter()
            if not final and now - self._rendered < RENDER_EVERY and kind == "image":
                return
            self._rendered = now
        self.controller.render_playground()

    def keep(self) -> None:
        """Queue the experiment whose generate params are the playground's, based on the first
        picked experiment's params, and start the queue if no worker runs it."""
        c = self.controller
        plan = views.keep_plan(self.form, c.state)
        names = c.launcher.queue([actions.Launch(plan.assignments)])
        status = actions.queue_status(c.repo)
        started = ""
        if status.active_workers + status.idle_workers == 0:
            actions.queue_start(c.repo, 1)
            started = " The queue started: it runs in the background."
        notes = "".join(f" Note: {note}." for note in plan.notes)
        c.say(
            f"Kept as experiment {', '.join(names)} (queued, {plan.based_on}'s params with "
            f"this prompt).{started}{notes}"
        )

    def close(self) -> None:
        self.client.close()


def _ended_text(kind: str, event: dict[str, Any]) -> str:
    message = str(event.get("message") or "")
    if kind == "worker_gone":
        return (
            f"the generation worker stopped ({message or 'no reason given'}); Draw starts it again"
        )
    if kind == "rejected":
        return f"refused: {message}"
    if kind == "cancelled":
        return "cancelled"
    return ""
