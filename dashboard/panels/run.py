"""The "Run experiments" tab: the launch form (dashboard.form, built from the params schema) and
the DVC queue (workers, start, stop, kill the picked, logs). Queue and Run now hand the form's
launches to the run commands (dashboard.commands.Launcher), which queue or run them through the
controller's one command path."""

from __future__ import annotations

from typing import Protocol

import ipywidgets as w

from dashboard.actions import Launch
from dashboard.form import LaunchForm
from dashboard.panels import Panel, button, heading, set_options
from dashboard.views import QueueSummary


class RunCommands(Protocol):
    def perform(self, action, name: str | None = None) -> bool: ...
    def queue(self, launches: list[Launch]) -> None: ...
    def run_now(self, launch: Launch) -> None: ...
    def start_queue(self, jobs: int) -> None: ...
    def stop_queue(self) -> None: ...
    def kill_picked(self) -> None: ...
    def show_log(self, name: str | None) -> None: ...


class LaunchPanel(Panel):
    """The launch form, built once the repository has been read (a page over a folder that is
    no DVC repository, or one that cannot be read, never pays for its hundred fields)."""

    def __init__(self, commands: RunCommands, repo):
        super().__init__()
        self._commands, self._repo = commands, repo
        self.form: LaunchForm | None = None
        self.box = w.VBox([w.HTML("<i>The form appears once the experiments are read.</i>")])
        self.widget = w.VBox([heading("Launch"), self.box])

    def reload(self) -> None:
        """params.yaml changed (or was read for the first time): the form shows it (fields
        the person edited stay)."""
        if self.form is None:
            commands = self._commands
            self.form = LaunchForm(
                self._repo,
                on_queue=commands.queue,
                on_run=commands.run_now,
                perform=commands.perform,
            )
            self.box.children = [self.form.widget]
        else:
            self.form.load()


class QueuePanel(Panel):
    def __init__(self, commands: RunCommands):
        super().__init__()

        def perform(action, name):
            return lambda: commands.perform(action, name)

        self.jobs = w.BoundedIntText(
            value=1, min=1, max=16, description="Workers", layout=w.Layout(width="150px")
        )
        self.start_button = button(
            "Start queue",
            "play",
            "dvc queue start: run the queued experiments",
            perform(lambda: commands.start_queue(self.jobs.value), "start queue"),
        )
        self.stop_button = button(
            "Stop queue",
            "stop",
            "dvc queue stop: finish the running ones, start no more",
            perform(commands.stop_queue, "stop queue"),
        )
        self.kill_button = button(
            "Kill picked",
            "times-circle",
            "dvc queue kill: interrupt the picked running experiments",
            perform(commands.kill_picked, "kill picked"),
        )
        self.info = w.HTML()
        self.info.add_class("queue-info")
        self.log_choice = w.Dropdown(description="Log of", layout=w.Layout(width="320px"))
        self.log_button = button(
            "Show log",
            "file-text",
            "dvc queue logs: what the experiment printed",
            perform(lambda: commands.show_log(self.log_choice.value), "show log"),
        )
        self.log_view = w.HTML()
        self.widget = w.VBox(
            [
                heading("Queue"),
                w.HBox([self.jobs, self.start_button, self.stop_button, self.kill_button]),
                self.info,
                w.HBox([self.log_choice, self.log_button]),
                self.log_view,
            ]
        )

    def render(self, summary: QueueSummary, log_html: str) -> None:
        with self.rendering():
            self.info.value = summary.html
            names = summary.log_names
            current = self.log_choice.value
            set_options(
                self.log_choice, names, current if current in names else (names or [None])[0]
            )
            self.log_view.value = log_html
