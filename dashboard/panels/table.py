"""The experiments table and its toolbar: filter, all commits, only columns that differ, the
column picker, clear picks, export. It draws a views.TableModel and sends the person's changes
to the controller (`commands`)."""

from __future__ import annotations

from typing import Any, Protocol

import ipywidgets as w

from dashboard.panels import Panel, button
from dashboard.views import TableModel, filter_message
from dashboard.widgets import ExperimentTable, thumbnail

THUMB = 48  # pixels: a row's picture, drawn at 24


class TableCommands(Protocol):
    def set_view(self, **changes: Any) -> None: ...
    def set_all_commits(self, value: bool) -> None: ...
    def pick(self, revs: list[str]) -> None: ...
    def export(self, kind: str) -> None: ...
    def table_drawn(self) -> None: ...


class TablePanel(Panel):
    def __init__(self, commands: TableCommands):
        super().__init__()
        self.filter = w.Text(
            placeholder="filter, e.g.  train_lora.rank >= 8 and type_fidelity_lora > 0.5",
            description="Filter",
            continuous_update=False,
            layout=w.Layout(width="46%"),
        )
        self.on_change(self.filter, lambda: commands.set_view(filter=self.filter.value))
        self.filter_message = w.HTML()
        self.all_commits = w.Checkbox(
            description="all branches and commits", indent=False, layout=w.Layout(width="auto")
        )
        self.on_change(self.all_commits, lambda: commands.set_all_commits(self.all_commits.value))
        self.only_differing = w.Checkbox(
            value=True,
            description="only columns that differ",
            indent=False,
            layout=w.Layout(width="auto"),
        )
        self.on_change(
            self.only_differing,
            lambda: commands.set_view(only_differing=self.only_differing.value),
        )
        self.column_picker = w.SelectMultiple(rows=14, layout=w.Layout(width="100%"))
        self.on_change(
            self.column_picker, lambda: commands.set_view(columns=self.column_picker.value)
        )
        self.columns_box = w.Accordion(children=[self.column_picker], selected_index=None)
        self.columns_box.set_title(0, "Columns (ctrl/shift-click to choose several)")
        self.clear_button = button(
            "Clear picks", "times", "compare nothing; pick rows again", lambda: commands.pick([])
        )
        self.csv_button = button(
            "CSV", "download", "export the table as shown to CSV", lambda: commands.export("csv")
        )
        self.md_button = button(
            "Markdown",
            "download",
            "export the table as shown to Markdown",
            lambda: commands.export("markdown"),
        )
        self.table = ExperimentTable()
        self.table.on_msg(self._on_message)
        self._commands = commands
        self.on_change(self.table, lambda: commands.set_view(sort=dict(self.table.sort)), "sort")
        self.on_change(self.table, lambda: commands.pick(list(self.table.picked)), "picked")
        self.count = w.HTML()
        toolbar = w.HBox(
            [
                self.filter,
                self.all_commits,
                self.only_differing,
                self.clear_button,
                self.csv_button,
                self.md_button,
            ],
            layout=w.Layout(align_items="center", flex_flow="row wrap"),
        )
        toolbar.add_class("dashboard-toolbar")
        self.widget = w.VBox(
            [toolbar, self.filter_message, self.columns_box, self.count, self.table]
        )
        self.widget.add_class("experiments-panel")

    def _on_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("drawn"):
            self._commands.table_drawn()

    def render(self, model: TableModel, options: list[str], chosen: list[str], count: str) -> None:
        """Draw the table; the picker lists `options` with `chosen` selected."""
        with self.rendering(), self.table.hold_sync():
            if list(self.column_picker.options) != options:
                self.column_picker.options = options
            if list(self.column_picker.value) != chosen:
                self.column_picker.value = tuple(chosen)
            self.table.header, self.table.cells = model.header, model.cells
            self.table.row_info, self.table.order = with_thumbs(model), model.order
            self.table.marks, self.table.picked = model.marks, model.picked
            self.table.colors, self.table.empty_text = model.colors, model.empty_text
            self.filter_message.value = filter_message(model.filter_error)
            self.count.value = count

    def render_picks(self, picked: list[str], colors: dict[str, str]) -> None:
        with self.rendering(), self.table.hold_sync():
            self.table.picked, self.table.colors = list(picked), colors

    def download(self, name: str, data: str | bytes, mime: str) -> None:
        self.table.download(name, data, mime)


def with_thumbs(model: TableModel) -> list[dict]:
    """The rows' info with a small picture of each row whose LoRA images are read."""
    rows = model.row_info
    if not model.thumbs:
        return rows
    rows = [dict(info) for info in rows]
    for index, file in model.thumbs.items():
        try:
            rows[index]["thumb"] = thumbnail(file, THUMB)
        except OSError:
            continue
    return rows
