"""What to do with the picked experiments, under the table: apply (with Undo and Cancel),
branch, rename, remove, push, pull; and the question that a destructive action asks first,
with its Confirm and Cancel buttons (`confirm_yes`, `confirm_no`). Its buttons call the
commands on the picked (dashboard.commands.PickedActions)."""

from __future__ import annotations

from typing import Protocol

import ipywidgets as w

from dashboard.panels import Panel, button, set_options


class ActionCommands(Protocol):
    def perform(self, action, name: str | None = None) -> bool: ...
    def ask_apply(self) -> None: ...
    def ask_undo(self) -> None: ...
    def cancel_work(self) -> None: ...
    def branch(self, new: str) -> None: ...
    def rename(self, new: str) -> None: ...
    def ask_remove(self) -> None: ...
    def push(self, remote: str | None) -> None: ...
    def pull(self, remote: str | None) -> None: ...
    def download_lora(self) -> None: ...
    def confirm(self) -> None: ...
    def dismiss(self) -> None: ...


class ActionsPanel(Panel):
    def __init__(self, commands: ActionCommands):
        super().__init__()

        def perform(action, name):
            return lambda: commands.perform(action, name)

        def named(action, field: w.Text, name):
            """Run `action(field's text)`; once it worked, the name fields are cleared."""

            def click() -> None:
                if commands.perform(lambda: action(field.value.strip()), name):
                    self.clear_names()

            return click

        self.apply_button = button(
            "Apply",
            "check",
            "dvc exp apply: bring the picked experiment into the workspace",
            perform(commands.ask_apply, "apply"),
        )
        self.undo_button = button(
            "Undo",
            "undo",
            "bring the workspace back as it was before the last Apply from this page",
            perform(commands.ask_undo, "undo"),
        )
        self.cancel_button = button(
            "Cancel",
            "stop",
            "stop the apply or undo cleanly (as Ctrl-C); Undo then brings back what was there",
            perform(commands.cancel_work, "cancel"),
        )
        self.branch_name = w.Text(placeholder="new branch", layout=w.Layout(width="160px"))
        self.branch_button = button(
            "Branch",
            "code-fork",
            "dvc exp branch: make a git branch of the picked",
            named(commands.branch, self.branch_name, "branch"),
        )
        self.new_name = w.Text(placeholder="new name", layout=w.Layout(width="160px"))
        self.rename_button = button(
            "Rename",
            "pencil",
            "dvc exp rename the picked experiment",
            named(commands.rename, self.new_name, "rename"),
        )
        self.remove_button = button(
            "Remove",
            "trash",
            "dvc exp remove the picked experiments",
            perform(commands.ask_remove, "remove"),
        )
        self.remote = w.Dropdown(layout=w.Layout(width="140px"))
        self.push_button = button(
            "Push",
            "upload",
            "dvc exp push: the picked experiments to the git remote, their outputs to the "
            "default DVC remote",
            perform(lambda: commands.push(self.remote.value), "push"),
        )
        self.pull_button = button(
            "Pull",
            "download",
            "dvc exp pull: every experiment of this commit on the git remote, with its outputs",
            perform(lambda: commands.pull(self.remote.value), "pull"),
        )
        self.lora_button = button(
            "LoRA files",
            "download",
            "download the picked row's LoRA: the diffusers and kohya (A1111, ComfyUI) files, its "
            "model card and samples, its params, as a zip",
            perform(commands.download_lora, "download the LoRA files"),
        )
        self.question = w.HTML()
        self.question.add_class("confirm-text-box")
        self.confirm_yes = w.Button(description="Confirm", button_style="danger", icon="check")
        self.confirm_yes.add_class("confirm-yes")
        self.confirm_yes.on_click(lambda _: commands.confirm())
        self.confirm_no = w.Button(description="Cancel", icon="times")
        self.confirm_no.add_class("confirm-no")
        self.confirm_no.on_click(lambda _: commands.dismiss())
        self.confirm_buttons = w.HBox([self.confirm_yes, self.confirm_no])
        self.confirm_box = w.VBox([self.question, self.confirm_buttons])
        self.confirm_box.add_class("confirm-box")
        bar = w.HBox(
            [
                w.HTML("<b style='margin-right:6px'>Picked:</b>"),
                self.apply_button,
                self.undo_button,
                self.cancel_button,
                self.branch_name,
                self.branch_button,
                self.new_name,
                self.rename_button,
                self.remove_button,
                self.remote,
                self.push_button,
                self.pull_button,
                self.lora_button,
            ],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = w.VBox([bar, self.confirm_box])
        self.widget.add_class("actions-panel")
        self.render(None, False, False, [])

    def render(
        self, question: str | None, can_confirm: bool, working: bool, remotes: list[str]
    ) -> None:
        """The question asked (None: none; `can_confirm`: with Confirm and Cancel, else a note
        while git and dvc find out), the Cancel of a running apply, the remotes."""
        with self.rendering():
            shown = question is not None
            self.confirm_box.layout.display = None if shown else "none"
            self.question.value = (
                f"<div class='confirm-text' style='background:#fff8c5;padding:8px;"
                f"border-radius:6px'>{question}</div>"
                if shown
                else ""
            )
            self.confirm_buttons.layout.display = None if can_confirm else "none"
            self.cancel_button.layout.display = None if working else "none"
            current = self.remote.value
            set_options(
                self.remote, remotes, current if current in remotes else (remotes or [None])[0]
            )
            for widget in (self.remote, self.push_button, self.pull_button):
                widget.layout.display = None if remotes else "none"

    def render_undo(self, can_undo: bool) -> None:
        self.undo_button.layout.display = None if can_undo else "none"

    def clear_names(self) -> None:
        self.branch_name.value = self.new_name.value = ""
