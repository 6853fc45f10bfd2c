"""The dashboard's panels: ipywidgets and anywidget views that draw their view model
(dashboard.views) and send commands: those that read and view to the controller
(dashboard.app.Dashboard), those that act on experiments to dashboard.commands (the run panels
to its Launcher, the actions panel to its PickedActions). A panel never reaches into another
one; it reads nothing but what `render` is handed.

    header.py   the title, the time of the last read, Refresh, the error banner and the status
    table.py    the experiments table, its filter, columns and export
    compare.py  the picked experiments: Pokémon, training curves, metric against param, classifier
    run.py      the launch form and the DVC queue
    actions.py  what to do with the picked experiments (apply, undo, branch, ...) and its questions
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import ipywidgets as w


class Panel:
    """A panel's plumbing: observers that stay quiet while the panel renders (setting a widget
    from the state must not send a command back)."""

    widget: w.Widget

    def __init__(self) -> None:
        self._rendering = 0

    @contextlib.contextmanager
    def rendering(self) -> Iterator[None]:
        self._rendering += 1
        try:
            yield
        finally:
            self._rendering -= 1

    def on_change(self, widget: w.Widget, send: Callable[[], None], name: str = "value") -> None:
        """Call `send()` when the person changes the widget's `name` (not while rendering)."""

        def observer(_change) -> None:
            if not self._rendering:
                send()

        widget.observe(observer, name)


def button(text: str, icon: str, tip: str, click: Callable[[], None], **style) -> w.Button:
    """A button named by its class `action-<text>` that calls `click()`."""
    made = w.Button(
        description=text, icon=icon, tooltip=tip, layout=w.Layout(width="auto"), **style
    )
    made.add_class("action-" + text.lower().replace(" ", "-"))
    made.on_click(lambda _: click())
    return made


def set_options(dropdown: w.Dropdown, options: list, value) -> None:
    """Options and value of a dropdown at once (it keeps no value when its options change)."""
    if list(dropdown.options) != list(options):
        dropdown.options = options
    if dropdown.value != value:
        dropdown.value = value


def heading(title: str) -> w.HTML:
    return w.HTML(f"<h4 style='margin:10px 0 2px'>{title}</h4>")
