"""The experiment dashboard: a table of every experiment with its key metrics, and beside it the
Pokémon, curves, plots and classifier of the ones picked; launching and the queue in a tab of
their own. Refreshed on its own when experiments change. Served by Voila
(dashboard/dashboard.ipynb, `make dashboard`) and shown as is in a JupyterLab cell:

    from dashboard import Dashboard
    Dashboard(".")

`Dashboard` is the controller (the Elm architecture's update): it owns the one state
(dashboard.state.DashboardState), the store, the watcher and the background reader of plots,
and it reads, views and compares. What acts on experiments and the workspace (launching, the
queue, apply and undo, branch, rename, remove, push, pull) lives in dashboard.commands, which
it hands to the panels that send those commands. Every command, its own and theirs, runs
through `perform`: it takes the lock, says any error in the page (and logs it), and the command
redraws what it changed from the view models (dashboard.views) into the panels
(dashboard.panels)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from dashboard import actions, questions, views, workspace
from dashboard.commands import Launcher, PickedActions
from dashboard.data import (
    FilterError,
    carry_picks,
    changed_params,
    to_csv,
    to_markdown,
    vanished,
)
from dashboard.dvc_cli import DvcError, error_text
from dashboard.panels.actions import ActionsPanel
from dashboard.panels.compare import ClassifierPanel, CurvesPanel, GalleryPanel, OverviewPanel
from dashboard.panels.header import HeaderPanel
from dashboard.panels.playground import PlaygroundPanel
from dashboard.panels.run import LaunchPanel, QueuePanel
from dashboard.panels.table import TablePanel
from dashboard.playground import views as playground_views
from dashboard.playground.commands import Playground
from dashboard.state import ACTIVE, DashboardState
from dashboard.state import ExperimentState as S
from dashboard.store import QUEUE_REF, ExperimentStore, Plots

log = logging.getLogger("dashboard")
PREFETCH = 10  # newest experiments whose plots are read ahead
# A queued or running experiment missing from a read: read again, this many times, this many
# seconds apart (DVC's window while a worker fetches a finished run's ref; see data.vanished).
REREADS, REREAD_PAUSE = 3, 1.0
VIEW_SETTINGS = {
    "filter",
    "sort",
    "columns",
    "only_differing",
    "gallery_mode",
    "curve",
    "smoothing",
    "x",
    "y",
}
# The table's and the comparison's shares of the width (CSS flex), and both while the playground
# is shown (its columns of images want the room more than the table's last columns).
TABLE_FLEX, COMPARE_FLEX, PLAYGROUND_FLEX = "2 1 820px", "1 1 420px", "1 1 560px"
COMPARE_TABS = ["Pokémon", "Playground", "Training curves", "Metric against param", "Classifier"]


def find_repository(start: str | Path | None = None) -> Path:
    """$DASHBOARD_REPO, else the first folder holding .dvc from `start` (or here) upwards."""
    if os.environ.get("DASHBOARD_REPO"):
        return Path(os.environ["DASHBOARD_REPO"]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    return next((p for p in [here, *here.parents] if (p / ".dvc").is_dir()), here)


class Coalescer:
    """Runs `function` whenever requested: on its own thread when `background` (requests that
    arrive while it runs merge into one more run), else at once."""

    def __init__(self, function: Callable[[], None], background: bool):
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


def digest(file: str | Path | None, store: ExperimentStore) -> str | None:
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


@dataclass
class Panels:
    header: HeaderPanel
    table: TablePanel
    actions: ActionsPanel
    gallery: GalleryPanel
    curves: CurvesPanel
    overview: OverviewPanel
    classifier: ClassifierPanel
    launch: LaunchPanel
    queue: QueuePanel
    playground: PlaygroundPanel

    def plot_boxes(self) -> list:
        return [
            self.curves.plot,
            self.overview.scatter,
            self.overview.parallel,
            self.classifier.confusion,
        ]


class Dashboard:
    """The app over the DVC repository at `repo` (default: found from here upwards)."""

    def __init__(
        self,
        repo: str | Path | None = None,
        watch: bool = True,
        poll_seconds: float = 1.0,
        timeout: float = 60.0,
    ):
        self.store = ExperimentStore(find_repository(repo), timeout=timeout)
        self.repo: Path = self.store.path
        self.state = DashboardState()
        self.signature = ""
        # Commits whose experiments stay listed after HEAD moves on: those that had queued or
        # running experiments (they belong to the commit they were queued on).
        self.kept_baselines: set[str] = set()
        self._stamps: dict[str, object] = {}  # file -> (mtime, size) at the last look
        self._busy = threading.RLock()
        self._stop = threading.Event()
        # In a page the watcher compares first, once the table is drawn; in a script at once.
        self._comparing = not watch
        self._plot_reader = Coalescer(self._compare_in_background, background=watch)
        # what acts on experiments and the workspace: the Run tab's and the actions bar's
        self.launcher = Launcher(self)
        self.picked_actions = PickedActions(self)
        self.playground = Playground(self)  # the prompt playground and its generation worker
        self.panels = self._build(held=watch)
        self.widget = self._layout()
        self.refresh()
        self.render_actions()
        self.render_playground()
        if watch:
            self.playground.start()  # the worker loads the base while the person looks around
            self.watch(poll_seconds)

    # ----- panels and layout ---------------------------------------------------------------
    def _build(self, held: bool) -> Panels:
        return Panels(
            header=HeaderPanel(self.repo, lambda: self.refresh(force=True)),
            table=TablePanel(self),
            actions=ActionsPanel(self.picked_actions),
            gallery=GalleryPanel(lambda mode: self.set_view(gallery_mode=mode)),
            curves=CurvesPanel(self.set_view, held),
            overview=OverviewPanel(self.set_view, held),
            classifier=ClassifierPanel(held),
            launch=LaunchPanel(self.launcher, self.repo),
            queue=QueuePanel(self.launcher),
            playground=PlaygroundPanel(self.playground, self.perform),
        )

    def _layout(self) -> w.Widget:
        """The table with the picked experiments' actions, and beside it the comparison in
        tabs (the Pokémon first); launching and the queue in a tab of their own.

        The table takes 2 parts of the width to the comparison's 1, from bases of 820 and
        420 px: at 1400 px the table shows name, state and the key metrics without scrolling
        sideways; below about 1290 px the comparison wraps under the table and both take the
        whole width. While the Playground tab is shown, each takes half (from 560 px), so that
        the base and two LoRAs fit beside the table."""
        p = self.panels
        compare = w.Tab(
            children=[
                p.gallery.widget,
                p.playground.widget,
                p.curves.widget,
                p.overview.widget,
                p.classifier.widget,
            ]
        )
        for index, title in enumerate(COMPARE_TABS):
            compare.set_title(index, title)
        compare.add_class("compare-tabs")
        left = w.VBox(
            [p.table.widget, p.actions.widget],
            layout=w.Layout(flex=TABLE_FLEX, min_width="0", margin="0 12px 0 0"),
        )
        right = w.VBox([compare], layout=w.Layout(flex=COMPARE_FLEX, min_width="0"))

        def widen(change: dict) -> None:  # the playground's images get half of the width
            playground = change["new"] == COMPARE_TABS.index("Playground")
            left.layout.flex = PLAYGROUND_FLEX if playground else TABLE_FLEX
            right.layout.flex = PLAYGROUND_FLEX if playground else COMPARE_FLEX

        compare.observe(widen, "selected_index")
        experiments = w.HBox([left, right], layout=w.Layout(flex_flow="row wrap"))
        experiments.add_class("experiments-view")
        run = w.VBox([p.launch.widget, p.queue.widget])
        run.add_class("run-view")
        tabs = w.Tab(children=[experiments, run])
        tabs.set_title(0, "Experiments")
        tabs.set_title(1, "Run experiments")
        tabs.add_class("main-tabs")
        self.tabs, self.compare_tabs = tabs, compare
        widget = w.VBox([p.header.widget, tabs], layout=w.Layout(padding="0 8px"))
        widget.add_class("pokemon-dashboard")
        return widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ----- the one command path ------------------------------------------------------------
    def perform(
        self,
        action: Callable[[], None],
        name: str | None = None,
        banner: bool = False,
        locked: bool = True,
    ) -> bool:
        """Run a command under the lock; when it fails, say why in the page (in the banner for
        reading and viewing, else in the status line, replacing any "...ing" message) and log
        the traceback to the "dashboard" logger. Whether it succeeded. A long write in the
        background runs with `locked=False`: holding the lock for minutes would hold every
        click of the page, Cancel too, until it ended (the workspace lock keeps it alone)."""
        name = name or getattr(action, "__name__", "an action")
        try:
            with self._busy if locked else contextlib.nullcontext():
                action()
        except Exception as error:
            # the same read error again (the watcher retries every second) is not logged
            # again: a kernel that writes to its log is never idle, so never shut down
            again = banner and str(error) in self.state.error
            if isinstance(error, (DvcError, ValueError)) and not again:  # error_text logs the rest
                log.warning("%s failed: %s", name, error, exc_info=error)
            text = error_text(error, name)
            if banner:
                self.show_error(text)
            else:
                self.say(text, error=True)
            return False
        return True

    def say(self, message: str, error: bool = False) -> None:
        self.state.message, self.state.message_error = message, error
        self.panels.header.render_message(message, error)

    def show_error(self, message: str) -> None:
        self.state.error = message
        self.panels.header.render_error(message)

    # ----- reading -------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Read the experiments again when something changed (or `force`); True if read."""
        read: list[bool] = []
        self.perform(lambda: read.append(self._read(force)), "refresh", banner=True)
        return bool(read and read[0])

    def _read(self, force: bool) -> bool:
        self.store.check()
        signature = self.store.signature()
        if signature == self.signature and not force:
            return False
        start = time.perf_counter()
        frame = self.state.frame
        busy = QUEUE_REF in signature or frame["state"].isin(ACTIVE).any()
        self.kept_baselines |= views.active_baselines(frame)
        for attempt in range(REREADS + 1):
            read = self.store.experiments(
                self.state.all_commits,
                queue_busy=bool(busy),
                baselines=sorted(self.kept_baselines),
            )
            missing = vanished(frame, read)
            if not missing or attempt == REREADS:
                break  # after the re-reads, gone for real (removed, or its baseline left)
            log.info("read again: %s between DVC's reads of the queue", sorted(missing))
            time.sleep(REREAD_PAUSE)
        frame = read
        self.kept_baselines |= views.active_baselines(frame)
        self.state.read_seconds = time.perf_counter() - start
        self.signature = signature
        self.set_frame(frame)
        self.show_error("")
        return True

    def set_frame(self, frame: pd.DataFrame) -> None:
        """A new read of the experiments: picks carried over (the defaults on the first read,
        plus experiments launched here as they start), then everything redrawn."""
        s = self.state
        first, old = s.frame.empty, s.frame
        s.frame = frame.reset_index(drop=True)
        s.changed = changed_params(s.frame)
        pickable = views.pickable(s.frame)
        s.picked = [rev for rev in carry_picks(old, s.frame, s.picked) if rev in pickable]
        if first and not s.picked:
            s.picked = views.default_picks(s.frame)
        workspace = s.frame[s.frame["id"] == views.WORKSPACE]
        if s.playground.defaults_from is None and not workspace.empty:
            playground_views.defaults_from_row(s.playground, workspace.iloc[0].to_dict())
            self.render_playground()
        started, ended = views.newly_started(s.frame, s.launched)
        s.launched -= ended
        s.picked = views.auto_picks(s.picked, started)
        self._read_failure_logs()
        self._look_at_files()
        self.panels.header.render_read(s.read_seconds)
        self.render_table()
        self.render_overview()
        self.render_queue()
        self.render_actions()
        if self._comparing:
            self.compare()

    def _read_failure_logs(self) -> None:
        """The tails of the logs of failed queued experiments, each read once."""
        s = self.state
        summary = views.queue_summary(s.frame)
        for name in views.failed_names(s.frame, summary.log_names):
            if name not in s.failure_logs:
                try:
                    s.failure_logs[name] = questions.tail(actions.queue_logs(self.repo, name), 20)
                except DvcError as error:
                    s.failure_logs[name] = f"(no log: {error})"

    def _look_at_files(self) -> None:
        """Remotes (.git/config) and the form's params.yaml when they changed; the undo."""
        if self._changed(".git/config"):
            self.state.remotes = actions.remotes(self.repo)
        if self._changed("params.yaml"):
            self.panels.launch.reload()
        self.state.can_undo = workspace.has_undo(self.repo)

    def _changed(self, name: str) -> bool:
        """Whether file `name` of the repository changed since the last look (first look: yes)."""
        try:
            stat = (self.repo / name).stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        changed = self._stamps.get(name, False) != stamp
        self._stamps[name] = stamp
        return changed

    # ----- drawing (view models into panels) -----------------------------------------------
    def render_table(self) -> None:
        s = self.state
        model = views.table_model(s)
        options = views.column_options(s.frame)
        chosen_set = set(s.columns) or set(views.default_columns(s.frame))
        chosen = [c for c in options if c in chosen_set]
        count = views.count_html(s, len(model.order))
        self.panels.table.render(model, options, chosen, count)

    def render_overview(self, parallel: bool = True) -> None:
        s = self.state
        x_options, x, y_options, y = views.axis_choices(s.frame)
        s.x = s.x if s.x in x_options else x
        s.y = s.y if s.y in y_options else y
        axes = (x_options, s.x, y_options, s.y)
        colors = views.colors(s.picked)
        self.panels.overview.render(views.overview_rows(s), axes, colors, parallel)

    def render_curves(self) -> None:
        s = self.state
        options, s.curve = views.curve_choice(s.plots.curves, s.curve)
        points = s.plots.curves.get(s.curve) if s.curve else None
        self.panels.curves.render(
            options,
            s.curve,
            points,
            views.labels(s.frame, s.picked),
            views.colors(s.picked),
            s.smoothing,
            views.curve_title(s.curve or ""),
            views.no_curves_text(s),
        )

    def render_gallery(self) -> None:
        model = views.gallery_model(
            self.state, lambda file: digest(file, self.store), self.store.inside
        )
        self.panels.gallery.render(model, self.state.gallery_mode)

    def render_comparison(self) -> None:
        s = self.state
        self.render_curves()
        self.render_gallery()
        self.panels.classifier.render(s.plots.confusion, views.labels(s.frame, s.picked))

    def render_queue(self) -> None:
        self.panels.queue.render(views.queue_summary(self.state.frame), self.state.log_html)

    def render_playground(self) -> None:
        """The playground pane (from the worker's reader thread too, as images arrive)."""
        with self.playground.lock:
            form = self.state.playground
            self.panels.playground.render(
                form,
                playground_views.gallery(form),
                playground_views.worker_html(form),
                playground_views.progress_html(form),
            )

    def render_actions(self) -> None:
        s = self.state
        self.panels.actions.render(s.question, s.can_confirm, s.working, s.remotes)
        self.panels.actions.render_undo(s.can_undo)

    def table_drawn(self) -> None:
        """The browser drew the table: draw the plots held back until then."""
        for box in self.panels.plot_boxes():
            box.release()

    # ----- view commands -------------------------------------------------------------------
    def set_view(self, **changes: Any) -> None:
        """Filter, sort, columns, curve, smoothing, axes or gallery mode changed: redraw what
        shows them."""
        unknown = set(changes) - VIEW_SETTINGS
        if unknown:
            raise TypeError(f"not a view setting: {', '.join(sorted(unknown))}")

        def set_view() -> None:
            for key, value in changes.items():
                setattr(self.state, key, tuple(value) if key == "columns" else value)
            if changes.keys() & {"filter", "sort", "columns", "only_differing"}:
                self.render_table()
            if changes.keys() & {"filter", "x", "y"}:
                self.render_overview()
            if changes.keys() & {"curve", "smoothing"}:
                self.render_curves()
            if "gallery_mode" in changes:
                self.render_gallery()

        self.perform(set_view, "set_view", banner=True)

    def set_all_commits(self, value: bool) -> None:
        self.state.all_commits = value
        self.refresh(force=True)

    def pick(self, revs: list[str]) -> None:
        """Compare these rows (ids or names), in this order."""

        def pick() -> None:
            self.state.picked = views.resolve_picks(self.state.frame, revs)
            self.panels.table.render_picks(self.state.picked, views.colors(self.state.picked))
            self._plot_reader.request()

        self.perform(pick, "pick", banner=True)

    def download(self, name: str, data: bytes, mime: str) -> None:
        """Make the browser save `data` as the file `name`."""
        self.panels.table.download(name, data, mime)

    def outside(self, path: str) -> str | None:
        """Why the page must not read the workspace file `path`, or None (store.outside)."""
        return self.store.outside(path)

    def export(self, kind: str) -> None:
        """Download the table as shown (rows filtered and sorted, columns shown)."""

        def export() -> None:
            try:
                rows = views.visible_rows(self.state)
            except FilterError:
                rows = self.state.frame
            columns = ["id", *views.visible_columns(self.state, rows)]
            if kind == "csv":
                self.panels.table.download("experiments.csv", to_csv(rows, columns), "text/csv")
            else:
                text = to_markdown(rows, columns)
                self.panels.table.download("experiments.md", text, "text/markdown")

        self.perform(export, f"export to {kind}", banner=True)

    # ----- comparing the picked ------------------------------------------------------------
    def _read_plots(self, picked: list[str]) -> Plots:
        roots = views.running_roots(self.state.frame)
        return self.store.plots(picked, roots) if picked else Plots()

    def compare(self) -> None:
        """Read the picked rows' plots (those not read before, the workspace and the running
        ones) and draw them, now."""
        self.state.plots = self._read_plots(views.comparable_picks(self.state))
        self.render_comparison()
        self.render_thumbs()

    def render_thumbs(self) -> None:
        """A picture in the table for each row whose images have been read."""
        thumbs = {}
        for rev, file in views.row_thumbnails(self.store.read_images()).items():
            with contextlib.suppress(DvcError):  # a file outside the repository: none
                thumbs[rev] = str(self.store.inside(file))
        if thumbs != self.state.thumbs:
            self.state.thumbs = thumbs
            self.render_table()

    def _compare_in_background(self) -> None:
        """After a pick: read the plots without holding the page, then draw them, unless the
        picks changed meanwhile (then the next run draws the newer picks: quick clicks on
        several rows cost one drawing)."""
        try:
            picked = views.comparable_picks(self.state)
            data = self._read_plots(picked)
            with self._busy:
                if picked != views.comparable_picks(self.state):
                    return
                self.state.plots = data
                self.render_comparison()
                self.render_overview(parallel=False)
                self.render_thumbs()
        except Exception as error:
            text = error_text(error, "comparing the picked experiments")
            self.show_error(f"Cannot compare the picked experiments: {text}")

    def live_signature(self) -> tuple:
        """Sizes and times of the curve files that the picked running experiments write."""
        roots = views.running_roots(self.state.frame)
        stamps = []
        for rev in views.comparable_picks(self.state):
            if rev in roots:
                for file in self.store.live_files(roots[rev]).values():
                    with contextlib.suppress(OSError):
                        stat = file.stat()
                        stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    # ----- live refresh --------------------------------------------------------------------
    def watch(self, seconds: float = 1.0) -> None:
        """Look for changes every `seconds` (15 ms of git at 1,000 experiments) and refresh."""

        def loop() -> None:
            self.perform(self._first_comparison, "comparing the picked", banner=True)
            live = ()
            while not self._stop.wait(seconds):
                try:
                    if self.store.signature() != self.signature:
                        self.refresh()
                    elif (now := self.live_signature()) != live:  # a running curve grew
                        live = now
                        self._plot_reader.request()
                except Exception:
                    log.exception("watching the repository failed")

        threading.Thread(target=loop, name="dashboard-watch", daemon=True).start()

    def _first_comparison(self) -> None:
        """Draw the picked experiments' plots, then read ahead the newest experiments' plots
        in one dvc call, so that picking them later shows at once."""
        self._comparing = True
        self.compare()
        frame = self.state.frame
        done = frame[
            frame["kind"].isin(["experiment", "baseline"]) & (frame["state"] == S.SUCCESS)
        ]
        newest = done.sort_values("created", ascending=False)["id"].head(PREFETCH).tolist()
        self.store.plots(newest)
        self.render_thumbs()

    def close(self) -> None:
        self._stop.set()
        self.playground.close()
