"""The experiment dashboard: a table of every experiment, the curves, plots and generated
Pokémon of the ones picked, refreshed on its own when experiments change. Served by Voila
(dashboard/dashboard.ipynb, `make dashboard`) and shown as is in a JupyterLab cell:

    from dashboard import Dashboard
    Dashboard(".")

State lives here; the widgets draw it. Every callback is a small method that changes state and
redraws; every error becomes a message in the page."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from dashboard import plots
from dashboard.data import (
    FIXED_COLUMNS,
    FilterError,
    best_rows,
    carry_picks,
    changed_params,
    differing_columns,
    filter_experiments,
    format_cell,
    sort_frame,
    to_csv,
    to_markdown,
)
from dashboard.dvc_cli import DvcError, error_text
from dashboard.manage import ManagePanel
from dashboard.store import QUEUE_REF, WORKSPACE, ExperimentStore, Plots
from dashboard.widgets import ExperimentTable, Gallery, image_uri

log = logging.getLogger("dashboard")
SHOWN_FIXED = ["name", "state", "created"]  # id, parent, error and pid are not shown
KEY_METRICS = ["type_fidelity_lora", "lift", "f1"]
PREFERRED_CURVE = "train_lora/plots/metrics/loss"
PREFERRED_X = ["train_lora.rank", "train_lora.learning_rate"]
UNFINISHED = ["queued", "running", "failed", "lost"]
NOT_PICKABLE = {"queued"}  # nothing to compare yet; a running one shows its curves so far
PREFETCH = 10  # newest experiments whose plots are read ahead
MAX_AUTO_PICKS = 8  # experiments launched here are picked as they finish, up to this many picks


def find_repository(start: str | Path | None = None) -> Path:
    """$DASHBOARD_REPO, else the first folder holding .dvc from `start` (or here) upwards."""
    if os.environ.get("DASHBOARD_REPO"):
        return Path(os.environ["DASHBOARD_REPO"]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    return next((p for p in [here, *here.parents] if (p / ".dvc").is_dir()), here)


def shown_errors(method):
    """Run a callback; any error becomes the banner's message instead of a traceback."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            with self._busy:
                return method(self, *args, **kwargs)
        except Exception as error:
            self.show_error(error_text(error, method.__name__))
        return None

    return wrapper


class Coalescer:
    """Runs `function` whenever requested: on its own thread when `background` (requests that
    arrive while it runs merge into one more run), else at once."""

    def __init__(self, function, background: bool):
        self.function, self.background = function, background
        self._wanted = threading.Event()
        if background:
            threading.Thread(target=self._loop, name="dashboard-compare", daemon=True).start()

    def request(self) -> None:
        if self.background:
            self._wanted.set()
        else:
            self.function()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self.function()


def short_name(param: str, params: list[str]) -> str:
    """train_lora.rank -> rank, unless another param ends in the same key."""
    key = param.rsplit(".", 1)[-1]
    return key if sum(p.rsplit(".", 1)[-1] == key for p in params) == 1 else param


def active_baselines(frame: pd.DataFrame) -> set[str]:
    """The baseline commits of queued and running experiments."""
    active = frame[frame["state"].isin(["queued", "running"]) & frame["parent"].notna()]
    return set(active["parent"])


def _digest(file: str | Path | None, store: ExperimentStore) -> str | None:
    """A hash of an image file's bytes, read only once `store.inside` has passed it (None for
    no file, a file outside the repository, or one that cannot be read)."""
    if file is None:
        return None
    try:
        checked = store.inside(file)
    except DvcError:
        return None
    return _file_digest(str(checked))


@functools.lru_cache(maxsize=4096)
def _file_digest(file: str) -> str | None:
    """The hash of a checked file's bytes, once: files of `dvc plots diff -o` never change."""
    try:
        return hashlib.blake2b(Path(file).read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def interval(row: pd.Series, metric: str) -> str:
    """` [low, high]`: the metric's 95 % interval where evaluate wrote one (`<metric>_low`,
    `<metric>_high`), so that a person sees whether two figures differ by more than noise."""
    low, high = (
        pd.to_numeric(row.get(f"{metric}_{end}"), errors="coerce") for end in ("low", "high")
    )
    if pd.isna(low) or pd.isna(high):
        return ""
    return f" [{format_cell(low)}, {format_cell(high)}]"


class Dashboard:
    """The app over the DVC repository at `repo` (default: found from here upwards)."""

    def __init__(self, repo: str | Path | None = None, watch: bool = True,
                 poll_seconds: float = 1.0, timeout: float = 60.0):  # fmt: skip
        self.store = ExperimentStore(find_repository(repo), timeout=timeout)
        self.frame = pd.DataFrame(columns=FIXED_COLUMNS)
        self.changed: dict[str, dict[str, Any]] = {}
        self.picked: list[str] = []
        self.plots = Plots()
        self.signature = ""
        # Commits whose experiments stay listed after HEAD moves on: those that had queued or
        # running experiments (they belong to the commit they were queued on).
        self.kept_baselines: set[str] = set()
        self.read_seconds = 0.0
        self._busy = threading.RLock()
        self._quiet = 0
        self._stop = threading.Event()
        self._compare = not watch  # when watching, the watcher draws the comparison first
        self._hold_plots = watch  # in a page, plots wait until the table is drawn
        self._comparer = Coalescer(self.compare_picked, background=watch)
        self.manage: ManagePanel | None = None
        self._build()
        self.refresh()
        if watch:
            self.watch(poll_seconds)

    # ----- widgets -------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = w.HTML(
            f"<h2 style='margin:4px 0'>Pokémon LoRA experiments</h2>"
            f"<code>{html.escape(str(self.store.path))}</code>"
        )
        self.status = w.HTML(layout=w.Layout(margin="0 0 0 auto"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       tooltip="read the experiments again")  # fmt: skip
        self.refresh_button.on_click(lambda _: self.refresh(force=True))
        self.banner = w.HTML(layout=w.Layout(display="none"))
        self.filter = w.Text(
            placeholder="filter, e.g.  train_lora.rank >= 8 and type_fidelity_lora > 0.5",
            description="Filter", continuous_update=False, layout=w.Layout(width="46%"),
        )  # fmt: skip
        self._on(self.filter, self.apply_view)
        self.filter_message = w.HTML()
        self.all_commits = w.Checkbox(description="all branches and commits", indent=False,
                                      layout=w.Layout(width="auto"))  # fmt: skip
        self._on(self.all_commits, lambda: self.refresh(force=True))
        self.only_differing = w.Checkbox(value=True, description="only columns that differ",
                                         indent=False, layout=w.Layout(width="auto"))  # fmt: skip
        self._on(self.only_differing, self.apply_view)
        self.column_picker = w.SelectMultiple(rows=14, layout=w.Layout(width="100%"))
        self._on(self.column_picker, self.apply_view)
        self.columns_box = w.Accordion(children=[self.column_picker], selected_index=None)
        self.columns_box.set_title(0, "Columns (ctrl/shift-click to choose several)")
        self.csv_button = w.Button(description="CSV", icon="download",
                                   tooltip="export the table as shown to CSV")  # fmt: skip
        self.csv_button.on_click(lambda _: self.export("csv"))
        self.md_button = w.Button(description="Markdown", icon="download",
                                  tooltip="export the table as shown to Markdown")  # fmt: skip
        self.md_button.on_click(lambda _: self.export("markdown"))
        self.clear_button = w.Button(description="Clear picks", icon="times",
                                     tooltip="compare nothing; pick rows again")  # fmt: skip
        self.clear_button.on_click(lambda _: self.pick([]))
        for button in (self.refresh_button, self.csv_button, self.md_button, self.clear_button):
            button.layout.width = "auto"
        self.table = ExperimentTable()
        self.table.on_msg(self._on_table_message)
        self._on(self.table, self.apply_view, "sort")
        self._on(self.table, lambda: self.pick(list(self.table.picked)), "picked")
        self.count = w.HTML()

        self.curve_choice = w.Dropdown(description="Curve", layout=w.Layout(width="420px"))
        self._on(self.curve_choice, self.draw_curves)
        self.smoothing = w.FloatSlider(
            value=0.8, min=0, max=0.99, step=0.01, description="Smoothing",
            continuous_update=False,
        )  # fmt: skip
        self._on(self.smoothing, self.draw_curves)
        self.curves = plots.PlotBox(held=self._hold_plots)
        self.x_choice = w.Dropdown(description="Param", layout=w.Layout(width="320px"))
        self.y_choice = w.Dropdown(description="Metric", layout=w.Layout(width="320px"))
        for choice in (self.x_choice, self.y_choice):
            self._on(choice, self.draw_overview)
        self.scatter = plots.PlotBox(held=self._hold_plots)
        self.parallel = plots.PlotBox(held=self._hold_plots)
        self.confusion = plots.PlotBox(held=self._hold_plots)
        self.gallery_mode = w.ToggleButtons(options=[("Base and LoRA", "both"), ("LoRA", "lora"),
                                                     ("Base", "base")], value="both")  # fmt: skip
        self._on(self.gallery_mode, self.draw_gallery)
        self.gallery = Gallery()
        self.manage_box = w.VBox()  # filled once the first read is done (it reads the frame)

        def section(title: str, *children) -> w.VBox:
            heading = w.HTML(f"<h3 style='margin:14px 0 4px'>{title}</h3>")
            return w.VBox([heading, *children])

        toolbar = w.HBox(
            [
                self.filter,
                self.all_commits,
                self.only_differing,
                self.clear_button,
                self.csv_button,
                self.md_button,
            ],
            layout=w.Layout(align_items="center"),
        )
        toolbar.add_class("dashboard-toolbar")
        self.widget = w.VBox([
            w.HBox([self.title, self.status, self.refresh_button],
                   layout=w.Layout(align_items="center")),
            self.banner,
            section("Experiments", toolbar, self.filter_message, self.columns_box, self.count,
                    self.table),
            section("Run experiments", self.manage_box),
            section("Training curves of the picked experiments",
                    w.HBox([self.curve_choice, self.smoothing]), self.curves),
            section("Generated Pokémon of the picked experiments", self.gallery_mode,
                    self.gallery),
            section("All experiments: metric against param", w.HBox([self.x_choice,
                    self.y_choice]), self.scatter, self.parallel),
            section("Classifier", self.confusion),
        ], layout=w.Layout(padding="0 8px"))  # fmt: skip
        self.widget.add_class("pokemon-dashboard")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ----- messages ------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        self.banner.value = (
            "<div class='dashboard-error' style='background:#ffebe9;border:1px solid #ff8182;"
            "padding:8px 12px;border-radius:6px;color:#82071e'>"
            f"<b>Problem:</b> {html.escape(message)}</div>"
        )
        self.banner.layout.display = None

    def clear_error(self) -> None:
        self.banner.value, self.banner.layout.display = "", "none"

    # ----- data ----------------------------------------------------------------------------
    @shown_errors
    def refresh(self, force: bool = False) -> bool:
        """Read the experiments again when something changed (or `force`); True if read."""
        self.store.check()
        signature = self.store.signature()
        if signature == self.signature and not force:
            return False
        start = time.perf_counter()
        busy = QUEUE_REF in signature or self.frame["state"].isin(["queued", "running"]).any()
        self.kept_baselines |= active_baselines(self.frame)
        frame = self.store.experiments(
            self.all_commits.value, queue_busy=bool(busy), baselines=sorted(self.kept_baselines)
        )
        self.kept_baselines |= active_baselines(frame)
        self.read_seconds = time.perf_counter() - start
        self.signature = signature
        self.set_frame(frame)
        self.clear_error()
        return True

    def set_frame(self, frame: pd.DataFrame) -> None:
        first, old = self.frame.empty, self.frame
        self.frame = frame.reset_index(drop=True)
        self.changed = changed_params(self.frame)
        pickable = set(self.frame.loc[~self.frame["state"].isin(NOT_PICKABLE), "id"])
        self.picked = [rev for rev in carry_picks(old, self.frame, self.picked) if rev in pickable]
        if first and not self.picked:
            self.picked = self.default_picks()
        if self.manage is not None:  # launched here and started: follow them at once
            room = max(0, MAX_AUTO_PICKS - len(self.picked))
            started = [rev for rev in self.manage.newly_started(self.frame)
                       if rev not in self.picked]  # fmt: skip
            self.picked += started[:room]
        if self.manage is None:
            self.manage = ManagePanel(self)
            self.manage_box.children = [self.manage.widget]
        else:
            self.manage.update()
        self._update_choices()
        self.apply_view()
        self.draw_overview()
        if self._compare:
            self.draw_comparison()

    def default_picks(self) -> list[str]:
        """The newest finished experiment and its baseline; the workspace when there is none."""
        done = self.frame[
            (self.frame["kind"] == "experiment") & (self.frame["state"] == "success")
        ]
        if done.empty:
            return [WORKSPACE] if WORKSPACE in set(self.frame["id"]) else []
        newest = done.sort_values("created", na_position="first").iloc[-1]
        return [rev for rev in (newest["parent"], newest["id"]) if isinstance(rev, str)]

    def _update_choices(self) -> None:
        attrs = self.frame.attrs
        options = [*SHOWN_FIXED, *attrs.get("params", []), *attrs.get("metrics", []),
                   *attrs.get("deps", [])]  # fmt: skip
        chosen = set(self.column_picker.value) or {
            *SHOWN_FIXED, *attrs.get("params", []), *attrs.get("metrics", [])
        }  # fmt: skip
        with self.quiet():
            self.column_picker.options = options
            self.column_picker.value = tuple(o for o in options if o in chosen)
        params = attrs.get("params", [])
        numeric = [
            p for p in params if pd.to_numeric(self.frame[p], errors="coerce").notna().any()
        ]
        differing = differing_columns(self.frame, numeric) or numeric
        x = next((p for p in PREFERRED_X if p in differing), differing[0] if differing else None)
        self._set_options(self.x_choice, differing, x)
        self._set_options(self.y_choice, attrs.get("metrics", []), self.key_metric())

    def _set_options(
        self, dropdown: w.Dropdown, options: list[str], preferred: str | None
    ) -> None:
        current = dropdown.value
        with self.quiet():
            dropdown.options = options
            dropdown.value = current if current in options else preferred

    @contextlib.contextmanager
    def quiet(self):
        """Change widgets without their observers redrawing (the caller redraws once)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _on(self, widget: w.Widget, action, name: str = "value") -> None:
        """Call `action()` when the widget's `name` changes, unless inside quiet()."""

        @shown_errors
        def observer(self, _change) -> None:
            if not self._quiet:
                action()

        widget.observe(functools.partial(observer, self), name)

    # ----- the table -----------------------------------------------------------------------
    def visible_rows(self) -> pd.DataFrame:
        """The rows shown: filtered, then sorted (across the whole table)."""
        frame = filter_experiments(self.frame, self.filter.value)
        sort = self.table.sort or {}
        return sort_frame(frame, sort.get("column"), bool(sort.get("descending")))

    def visible_columns(self, rows: pd.DataFrame | None = None) -> list[str]:
        """The chosen columns; with "only columns that differ", those whose values differ
        among `rows` (the rows shown), or among all rows when fewer than two are shown."""
        chosen = [c for c in self.column_picker.value if c in self.frame]
        if self.only_differing.value and len(self.frame) > 1:
            rows = self.frame if rows is None or len(rows) < 2 else rows
            varying = set(differing_columns(rows, [c for c in chosen if c not in SHOWN_FIXED]))
            chosen = [c for c in chosen if c in SHOWN_FIXED or c in varying]
        return chosen

    def apply_view(self) -> None:
        """Draw the table as the filter, sort and column choices say."""
        try:
            rows = self.visible_rows()
            self.filter_message.value = ""
        except FilterError as error:
            self.filter_message.value = (
                f"<span class='filter-error' style='color:#cf222e'>{html.escape(str(error))}. "
                "Use column names as shown, e.g. <code>train_lora.rank &gt;= 8</code>, "
                '<code>state == "failed"</code>.</span>'
            )
            rows = self.frame
        columns = self.visible_columns(rows)
        self._draw_table(rows, columns)

    def _draw_table(self, rows: pd.DataFrame, columns: list[str]) -> None:
        frame = self.frame
        metrics = set(frame.attrs.get("metrics", []))
        groups = {c: "param" for c in frame.attrs.get("params", [])}
        groups.update({c: "metric" for c in metrics})
        groups.update({c: "dep" for c in frame.attrs.get("deps", [])})
        header = [
            {"name": c, "label": c.removeprefix("dep:"), "group": groups.get(c, "fixed"),
             "numeric": bool(c in metrics or pd.api.types.is_numeric_dtype(frame[c]))}
            for c in columns
        ]  # fmt: skip
        position = {c: i for i, c in enumerate(columns)}
        marks = {}
        for index, rev in enumerate(frame["id"]):
            for param in self.changed.get(rev, {}):
                if param in position:
                    marks[f"{index},{position[param]}"] = "changed"
        ids = {rev: i for i, rev in enumerate(frame["id"])}
        finished = rows[~rows["state"].isin(UNFINISHED)]  # a run's metrics so far are no record
        for metric, revs in best_rows(finished, [c for c in columns if c in metrics]).items():
            for rev in revs:
                marks[f"{ids[rev]},{position[metric]}"] = "best"
        cells = [[format_cell(v) for v in values] for values in
                 frame[columns].itertuples(index=False)]  # fmt: skip
        info = [
            {"id": r.id, "name": r.name, "kind": r.kind, "state": r.state,
             "error": r.error or "", "pickable": r.state not in NOT_PICKABLE}
            for r in frame[["id", "name", "kind", "state", "error"]].itertuples(index=False)
        ]  # fmt: skip
        order = [ids[rev] for rev in rows["id"]]
        with self.table.hold_sync(), self.quiet():
            self.table.header, self.table.cells, self.table.row_info = header, cells, info
            self.table.order, self.table.marks = order, marks
            self.table.picked, self.table.colors = list(self.picked), self.colors()
            self.table.empty_text = (
                "No experiment matches the filter." if len(frame) else self.empty_text()
            )
        self._draw_count(rows)

    def empty_text(self) -> str:
        return ("No experiments yet: run the pipeline (`make demo`), then try "
                "`dvc exp run -S train_lora.rank=8`.")  # fmt: skip

    def _draw_count(self, rows: pd.DataFrame) -> None:
        experiments = self.frame[self.frame["kind"] == "experiment"]
        states = experiments["state"].value_counts().to_dict()
        detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        shown = f"{len(rows)} of {len(self.frame)} rows shown"
        text = (f"<span class='experiment-count' data-experiments='{len(experiments)}' "
                f"data-shown='{len(rows)}'><b>{len(experiments)} experiments</b>"
                f"{f' ({detail})' if detail else ''} · {shown}</span>")  # fmt: skip
        if experiments.empty:
            text += (" · <i>No experiments yet: make one with <code>dvc exp run -S "
                     "train_lora.rank=8</code> (see the README).</i>")  # fmt: skip
        failed = experiments[experiments["state"].isin(["failed", "lost"])]
        for row in failed.itertuples():
            log_tail = ""
            if self.manage is not None and row.name in set(self.manage.log_choice.options):
                log_tail = (
                    "<details><summary>its log (dvc queue logs)</summary><pre>"
                    f"{html.escape(self.manage.failure_log(row.name))}</pre></details>"
                )
            text += (
                f"<div class='failed-experiment' style='color:#cf222e'>✖ {html.escape(row.name)}"
                f" {row.state}: {html.escape(row.error or 'no error message from DVC')}{log_tail}"
                "</div>"
            )
        self.count.value = text
        self.status.value = (f"<span style='color:#57606a'>read in {self.read_seconds:.2f} s at "
                             f"{time.strftime('%H:%M:%S')}</span>")  # fmt: skip

    @shown_errors
    def pick(self, revs: list[str]) -> None:
        """Compare these rows (ids or names), in this order."""
        by_name = dict(zip(self.frame["name"], self.frame["id"], strict=False))
        self.picked = [by_name.get(rev, rev) for rev in revs]
        with self.quiet():
            self.table.picked, self.table.colors = list(self.picked), self.colors()
        self._comparer.request()

    def _on_table_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("drawn"):
            self.release_plots()

    def release_plots(self) -> None:
        """Draw the plots held back until the browser had drawn the table."""
        for box in (self.curves, self.scatter, self.parallel, self.confusion):
            box.release()

    def colors(self) -> dict[str, str]:
        return {rev: plots.PALETTE[i % len(plots.PALETTE)] for i, rev in enumerate(self.picked)}

    @shown_errors
    def export(self, kind: str) -> None:
        rows = self.visible_rows()
        columns = ["id", *self.visible_columns(rows)]
        if kind == "csv":
            self.table.download("experiments.csv", to_csv(rows, columns), "text/csv")
        else:
            self.table.download("experiments.md", to_markdown(rows, columns), "text/markdown")

    # ----- comparison of the picked --------------------------------------------------------
    def labels(self) -> dict[str, str]:
        names = dict(zip(self.frame["id"], self.frame["name"], strict=False))
        return {rev: names.get(rev, rev[:7]) for rev in self.picked}

    def _comparable_picks(self) -> list[str]:
        return [rev for rev in self.picked if rev in set(self.frame["id"])]

    def running_roots(self) -> dict[str, str]:
        """{id: the folder its queue task runs in} of the running experiments."""
        running = self.frame[(self.frame["state"] == "running") & self.frame["root"].notna()]
        return dict(zip(running["id"], running["root"], strict=True))

    def _read_plots(self, picked: list[str]) -> Plots:
        return self.store.plots(picked, self.running_roots()) if picked else Plots()

    def live_signature(self) -> tuple:
        """Sizes and times of the curve files that the picked running experiments write."""
        roots = self.running_roots()
        stamps = []
        for rev in self._comparable_picks():
            if rev in roots:
                for file in self.store.live_files(roots[rev]).values():
                    with contextlib.suppress(OSError):
                        stat = file.stat()
                        stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def draw_comparison(self) -> None:
        """Read the picked rows' plots (those not read before, the workspace and the running
        ones) and draw."""
        self.plots = self._read_plots(self._comparable_picks())
        self._draw_plots()

    def compare_picked(self) -> None:
        """After a pick: read the plots without holding the page, then draw them, unless the
        picks changed meanwhile (then the next run draws the newer picks: quick clicks on
        several rows cost one drawing)."""
        try:
            picked = self._comparable_picks()
            data = self._read_plots(picked)
            with self._busy:
                if picked != self._comparable_picks():
                    return
                self.plots = data
                self._draw_plots()
                self.draw_overview(parallel=False)
        except Exception as error:
            text = error_text(error, "comparing the picked experiments")
            self.show_error(f"Cannot compare the picked experiments: {text}")

    def _draw_plots(self) -> None:
        curves = sorted(self.plots.curves)
        preferred = next(
            (c for c in curves if PREFERRED_CURVE in c), curves[0] if curves else None
        )
        self._set_options(self.curve_choice, curves, preferred)
        self.draw_curves()
        self.draw_gallery()
        self.confusion.show(plots.confusion_figure(self.plots.confusion, self.labels()))

    def draw_curves(self) -> None:
        path = self.curve_choice.value
        if not path:
            message = "Pick experiments in the table to see their curves."
            if self.picked:
                message = (
                    "The picked experiments have no curves ("
                    + "; ".join(
                        f"{self.labels().get(r, r)}: {m}" for r, m in self.plots.missing.items()
                    )
                    + ")."
                )
            self.curves.show(plots.empty_figure(message))
            return
        title = path.removeprefix("outputs/").replace("/plots/metrics/", ": ")
        figure = plots.curves_figure(self.plots.curves[path], self.labels(), self.colors(),
                                     title, self.smoothing.value)  # fmt: skip
        self.curves.show(figure)

    def draw_overview(self, parallel: bool = True) -> None:
        """The scatter (picked rows in their colours) and, unless told not, the parallel
        coordinates (which picks do not change) over the filtered rows."""
        try:
            rows = filter_experiments(self.frame, self.filter.value)
        except FilterError:
            rows = self.frame
        rows = rows[rows["kind"] != "workspace"] if len(rows) > 1 else rows
        x, y = self.x_choice.value, self.y_choice.value
        if x is None or y is None:
            message = "Run experiments that change a param to compare them here."
            self.scatter.show(plots.empty_figure(message))
            self.parallel.show(plots.empty_figure(message))
            return
        self.scatter.show(plots.scatter_figure(rows, x, y, self.colors()))
        if parallel:
            params = [p for p in self.x_choice.options if p != y][:8]
            self.parallel.show(plots.parallel_figure(rows, params, y))

    def key_metric(self) -> str | None:
        metrics = self.frame.attrs.get("metrics", [])
        return next((m for m in KEY_METRICS if m in metrics), metrics[0] if metrics else None)

    def column_detail(self, rev: str, kind: str = "lora") -> str:
        """What an experiment changed from its baseline and its key metric (for the base
        model's images, the base's figure: type_fidelity_base for type_fidelity_lora)."""
        params = self.frame.attrs.get("params", [])
        changed = self.changed.get(rev, {})
        parts = [f"{short_name(p, params)}={format_cell(v)}" for p, v in changed.items()]
        parts += [self.metric_detail(rev, kind)]
        return " · ".join(part for part in parts if part) or "baseline params"

    def metric_detail(self, rev: str, kind: str = "lora") -> str:
        """`<key metric> <value>` of a row ("" when it has none)."""
        row = self.frame[self.frame["id"] == rev]
        metric = self.key_metric()
        if metric and kind == "base" and metric.endswith("_lora"):
            base_metric = metric.removesuffix("_lora") + "_base"
            metric = base_metric if base_metric in self.frame else metric
        if (
            metric
            and not row.empty
            and pd.notna(pd.to_numeric(row.iloc[0][metric], errors="coerce"))
        ):
            return f"{metric} {format_cell(row.iloc[0][metric])}{interval(row.iloc[0], metric)}"
        return ""

    def draw_gallery(self) -> None:
        images, mode = self.plots.images, self.gallery_mode.value
        kinds = ["base", "lora"] if mode == "both" else [mode]
        labels, colors = self.labels(), self.colors()
        kind_names = {"lora": "LoRA", "base": "base"}
        columns = [
            {"key": f"{rev}:{kind}", "label": f"{labels[rev]} · {kind_names[kind]}",
             "detail": self.column_detail(rev, kind), "color": colors.get(rev), "rev": rev,
             "kind": kind}
            for rev in self.picked for kind in kinds
        ]  # fmt: skip
        keys = list(images[["prompt", "seed"]].drop_duplicates().itertuples(index=False))
        files, rows = {}, []
        lookup = {(r.rev, r.kind, r.prompt, r.seed): r.file for r in images.itertuples()}
        columns = self._one_column_per_base(columns, lookup, keys)
        for prompt, seed in keys:
            cells = []
            for column in columns:
                file = lookup.get((column["rev"], column["kind"], prompt, seed))
                if file is None:
                    absent = f"this experiment has no image for '{prompt}', seed {seed}"
                    reason = self.plots.missing.get(column["rev"], absent)
                    cells.append({"missing": reason})
                    continue
                key = f"{column['key']}:{prompt}:{seed}"
                try:
                    files[key] = self.store.inside(file)
                except DvcError as error:
                    cells.append({"missing": str(error)})
                    continue
                title = f"{column['label']} — {prompt}, seed {seed}"
                cells.append({"key": key, "src": image_uri(files[key], 256), "title": title})
            rows.append({"label": f"{prompt} · seed {seed}", "cells": cells})
        self.gallery.files = files
        with self.gallery.hold_sync():
            self.gallery.columns = columns if rows else []
            self.gallery.rows = rows
            self.gallery.empty_text = (
                "Pick experiments in the table to see their Pokémon." if not self.picked else
                "No generated images for the picked experiments: "
                + "; ".join(f"{labels.get(r, r)}: {m}" for r, m in self.plots.missing.items())
            )  # fmt: skip

    def _one_column_per_base(self, columns: list[dict], lookup: dict, keys: list) -> list[dict]:
        """The base model's images once when picked experiments share them (same base model,
        prompts and seeds: the usual case), so that their LoRA columns sit side by side."""
        kept, first_of = [], {}
        for column in columns:
            if column["kind"] == "base":
                files = [lookup.get((column["rev"], "base", *key)) for key in keys]
                content = tuple(_digest(file, self.store) for file in files)
                if any(content) and content in first_of:
                    first = first_of[content]
                    first["same"].append(column["label"].removesuffix(" · base"))
                    continue
                first_of[content] = column
                column["same"] = []
            kept.append(column)
        for column in first_of.values():
            if column["same"]:
                parts = [f"the same for {', '.join(column['same'])}",
                         self.metric_detail(column["rev"], "base")]  # fmt: skip
                column["detail"] = " · ".join(part for part in parts if part)
            del column["same"]
        return kept

    # ----- live refresh --------------------------------------------------------------------
    def watch(self, seconds: float = 1.0) -> None:
        """Look for changes every `seconds` (15 ms of git at 1,000 experiments) and refresh."""

        def loop() -> None:
            self.start_comparing()
            live = ()
            while not self._stop.wait(seconds):
                try:
                    if self.store.signature() != self.signature:
                        self.refresh()
                    elif (now := self.live_signature()) != live:  # a running curve grew
                        live = now
                        self._comparer.request()
                except Exception:
                    log.exception("watching the repository failed")

        threading.Thread(target=loop, name="dashboard-watch", daemon=True).start()

    @shown_errors
    def start_comparing(self) -> None:
        """Draw the picked experiments' plots, then read ahead the newest experiments' plots
        in one dvc call, so that picking them later shows at once."""
        self._compare = True
        self.draw_comparison()
        done = self.frame[self.frame["kind"].isin(["experiment", "baseline"])
                          & (self.frame["state"] == "success")]  # fmt: skip
        newest = done.sort_values("created", ascending=False)["id"].head(PREFETCH).tolist()
        self.store.plots(newest)

    def close(self) -> None:
        self._stop.set()
