"""The page's head: title and repository, when the table was read, Refresh; below it the error
banner (reading and comparing) and the status line (what the last action did)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path

import ipywidgets as w

from dashboard.panels import Panel, button


class HeaderPanel(Panel):
    def __init__(self, repo: Path, refresh: Callable[[], None]):
        super().__init__()
        self.title = w.HTML(
            "<h2 style='margin:4px 0'>Pokémon LoRA experiments</h2>"
            f"<code>{html.escape(str(repo))}</code>"
        )
        self.read_info = w.HTML(layout=w.Layout(margin="0 0 0 auto"))
        self.refresh_button = button("Refresh", "refresh", "read the experiments again", refresh)
        self.banner = w.HTML(layout=w.Layout(display="none"))
        self.banner.add_class("dashboard-banner")
        self.status = w.HTML()
        self.status.add_class("action-status")
        top = w.HBox(
            [self.title, self.read_info, self.refresh_button],
            layout=w.Layout(align_items="center"),
        )
        self.widget = w.VBox([top, self.banner, self.status])

    def render_read(self, seconds: float) -> None:
        self.read_info.value = (
            f"<span style='color:#57606a'>read in {seconds:.2f} s at "
            f"{time.strftime('%H:%M:%S')}</span>"
        )

    def render_error(self, message: str) -> None:
        if not message:
            self.banner.value, self.banner.layout.display = "", "none"
            return
        self.banner.value = (
            "<div class='dashboard-error' style='background:#ffebe9;border:1px solid #ff8182;"
            "padding:8px 12px;border-radius:6px;color:#82071e'>"
            f"<b>Problem:</b> {html.escape(message)}</div>"
        )
        self.banner.layout.display = None

    def render_message(self, message: str, error: bool) -> None:
        if not message:
            self.status.value = ""
            return
        color, kind = ("#cf222e", "action-error") if error else ("#1a7f37", "action-done")
        self.status.value = (
            f"<div class='{kind}' style='color:{color};margin:6px 0'>{html.escape(message)}</div>"
        )
