"""The dashboard's second half: launch experiments (the form), control the DVC queue, and act on
the picked experiments (apply, branch, rename, remove, push, pull, kill). Each button is a small
method that runs one action and says what happened; the app's watcher then redraws the table."""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from dashboard import actions, workspace
from dashboard.data import format_cell
from dashboard.dvc_cli import DvcError, error_text, interrupt
from dashboard.form import LaunchForm

if TYPE_CHECKING:
    from dashboard.app import Dashboard

LOG_LINES = 60
log = logging.getLogger("dashboard")


def _pre(text: str, css: str = "") -> str:
    style = "max-height:320px;overflow:auto;background:#f6f8fa;padding:8px;font-size:12px"
    return f"<pre class='{css}' style='{style}'>{html.escape(text)}</pre>"


def tail(text: str, lines: int = LOG_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept)


SHOWN_FILES = 30  # files named per group in a question; the rest are counted


def _files(paths: list[str] | dict[str, str]) -> str:
    """Paths (with what changed, for outputs), escaped, the first SHOWN_FILES of them."""
    items = [f"{p} ({paths[p]})" if isinstance(paths, dict) else p for p in paths]
    more = f" and {len(items) - SHOWN_FILES} more" if len(items) > SHOWN_FILES else ""
    return html.escape(", ".join(items[:SHOWN_FILES]) + more)


def overwritten_html(what: workspace.Overwritten) -> str:
    """What an apply overwrites, grouped, for its question; and that Undo brings it back."""
    if not what:
        return ("<div class='apply-safe'>Nothing of yours is overwritten: no edited or untracked "
                "file of the experiment's, no changed output. <b>Undo</b> brings the workspace "
                "back as it is now.</div>")  # fmt: skip
    groups = [
        ("apply-edited", "Edited files", what.edited),
        ("apply-untracked", "Untracked files that the experiment also has", what.untracked),
        ("apply-outputs", "Outputs changed since the last <code>dvc commit</code>", what.outputs),
    ]
    items = "".join(f"<li class='{css}'>{title}: {_files(paths)}</li>"
                    for css, title, paths in groups if paths)  # fmt: skip
    return ("<div class='apply-warning' style='color:#9a6700'>⚠ This replaces your version of:"
            f"<ul class='apply-overwrites'>{items}</ul>It is kept first "
            f"(<code>{workspace.UNDO_REFS}</code>, <code>{workspace.UNDO_FILES}</code>): "
            "<b>Undo</b> brings it back, with the workspace as it is now.</div>")  # fmt: skip


def undo_html(plan: workspace.UndoPlan) -> str:
    """What an Undo brings back, and what changed since the apply that it replaces."""
    kept = plan.entry.kept
    text = (f"Undo the Apply of <b>{html.escape(plan.entry.experiment)}</b>? The workspace comes "
            "back as it was before it: params.yaml, dvc.lock and the outputs")  # fmt: skip
    groups = [("undo-edited", "your edits of", kept.edited),
              ("undo-untracked", "your untracked", kept.untracked),
              ("undo-outputs", "your changed outputs", kept.outputs)]  # fmt: skip
    items = "".join(f"<li class='{css}'>{title} {_files(paths)}</li>"
                    for css, title, paths in groups if paths)  # fmt: skip
    text += f", and <ul class='undo-back'>{items}</ul>" if items else ".<br>"
    replaced = [*plan.changed_since, *plan.outputs_changed_since]
    if replaced:
        text += ("<div class='undo-warning' style='color:#9a6700'>⚠ Changed since the Apply, "
                 f"and replaced: {_files(replaced)}</div>")  # fmt: skip
    return text


class ManagePanel:
    """Launch, queue and actions over the app's repository and picked rows."""

    def __init__(self, app: Dashboard):
        self.app = app
        self.repo: Path = app.store.path
        self.running: dict[str, actions.WorkspaceRun] = {}  # workspace runs started here
        self.failure_logs: dict[str, str] = {}
        self._stamps: dict[str, object] = {}  # file -> (mtime, size) at the last look
        self.launched: set[str] = set()  # names queued from this page, not yet started
        self.form = LaunchForm(self.repo, on_queue=self.queue, on_run=self.run_now,
                               perform=self._do)  # fmt: skip
        self.status = w.HTML()
        self.status.add_class("action-status")
        self.jobs = w.BoundedIntText(value=1, min=1, max=16, description="Workers",
                                     layout=w.Layout(width="150px"))  # fmt: skip
        self.start_button = self._button(
            "Start queue", "play", self.start_queue, "dvc queue start: run the queued experiments"
        )
        self.stop_button = self._button(
            "Stop queue",
            "stop",
            self.stop_queue,
            "dvc queue stop: finish the running ones, start no more",
        )
        self.kill_button = self._button(
            "Kill picked",
            "times-circle",
            self.kill_picked,
            "dvc queue kill: interrupt the picked running experiments",
        )
        self.queue_info = w.HTML()
        self.queue_info.add_class("queue-info")
        self.log_choice = w.Dropdown(description="Log of", layout=w.Layout(width="320px"))
        self.log_button = self._button(
            "Show log", "file-text", self.show_log, "dvc queue logs: what the experiment printed"
        )
        self.log_view = w.HTML()
        self.apply_button = self._button("Apply", "check", self.ask_apply,
                                         "dvc exp apply: bring the picked experiment into the "
                                         "workspace")  # fmt: skip
        self.undo_button = self._button("Undo", "undo", self.ask_undo,
                                        "bring the workspace back as it was before the last "
                                        "Apply from this page")  # fmt: skip
        self.cancel_button = self._button("Cancel", "stop", self.cancel_work,
                                          "stop the apply or undo cleanly (as Ctrl-C); Undo "
                                          "then brings back what was there")  # fmt: skip
        self.cancel_button.layout.display = "none"
        self.work: threading.Thread | None = None  # the apply or undo going on, if any
        self._process: Any = None  # its dvc process, for Cancel
        self.branch_name = w.Text(placeholder="new branch", layout=w.Layout(width="160px"))
        self.branch_button = self._button(
            "Branch", "code-fork", self.branch, "dvc exp branch: make a git branch of the picked"
        )
        self.new_name = w.Text(placeholder="new name", layout=w.Layout(width="160px"))
        self.rename_button = self._button(
            "Rename", "pencil", self.rename, "dvc exp rename the picked experiment"
        )
        self.remove_button = self._button(
            "Remove", "trash", self.ask_remove, "dvc exp remove the picked experiments"
        )
        self.remote = w.Dropdown(layout=w.Layout(width="140px"))
        self.push_button = self._button(
            "Push",
            "upload",
            self.push,
            "dvc exp push: the picked experiments to the git remote, their outputs to the "
            "default DVC remote",
        )
        self.pull_button = self._button(
            "Pull",
            "download",
            self.pull,
            "dvc exp pull: every experiment of this commit on the git remote, with its outputs",
        )
        self.confirm_box = w.VBox()
        self.confirm_box.add_class("confirm-box")
        self.widget = w.VBox([
            w.HTML("<h4 style='margin:8px 0 2px'>Launch</h4>"), self.form.widget,
            w.HTML("<h4 style='margin:12px 0 2px'>Queue</h4>"),
            w.HBox([self.jobs, self.start_button, self.stop_button, self.kill_button]),
            self.queue_info, w.HBox([self.log_choice, self.log_button]), self.log_view,
            w.HTML("<h4 style='margin:12px 0 2px'>Picked experiments</h4>"),
            w.HBox([self.apply_button, self.undo_button, self.cancel_button, self.branch_name,
                    self.branch_button, self.new_name,
                    self.rename_button, self.remove_button, self.remote, self.push_button,
                    self.pull_button], layout=w.Layout(flex_flow="row wrap")),
            self.confirm_box, self.status,
        ])  # fmt: skip
        self.widget.add_class("manage-panel")
        self.update()

    def _button(self, text: str, icon: str, action: Callable[[], None], tip: str) -> w.Button:
        button = w.Button(description=text, icon=icon, tooltip=tip, layout=w.Layout(width="auto"))
        button.add_class("action-" + text.lower().replace(" ", "-"))
        button.on_click(lambda _: self._do(action))
        return button

    def _do(self, action: Callable[[], None]) -> bool:
        """The one error path of every button and the form: run `action`; when it fails, say
        why in the page (replacing any "...ing" message) and log the traceback. Whether it
        succeeded."""
        try:
            action()
        except Exception as error:
            if isinstance(error, (DvcError, ValueError)):  # expected: error_text logs the rest
                log.warning("%s failed: %s", getattr(action, "__name__", "an action"), error,
                            exc_info=error)  # fmt: skip
            self.say(error_text(error, getattr(action, "__name__", "an action")), error=True)
            return False
        return True

    def say(self, message: str, error: bool = False) -> None:
        color = "#cf222e" if error else "#1a7f37"
        kind = "action-error" if error else "action-done"
        self.status.value = (f"<div class='{kind}' style='color:{color};margin:6px 0'>"
                             f"{html.escape(message)}</div>")  # fmt: skip

    def _after(self) -> None:
        """Read the repository again now (the watcher would within a second)."""
        self.app.refresh(force=True)

    # ----- launch --------------------------------------------------------------------------
    def queue(self, launches: list[actions.Launch]) -> None:
        self.say(f"Queueing {len(launches)} experiment(s)...")
        try:
            names = actions.queue(self.repo, launches)
        except actions.QueueError as error:  # part of a grid queued: show and follow those
            self.launched.update(error.queued)
            if error.queued:
                self._after()
            raise
        self.launched.update(names)
        self.say(f"Queued {len(names)}: {', '.join(names)}. Start the queue to run them.")
        self._after()

    def run_now(self, launch: actions.Launch) -> None:
        """Start a workspace run; refused (WorkspaceBusy, naming the holder) while another tab
        or process holds the workspace lock, which the run holds until it ends."""
        run = actions.run_now(self.repo, launch)
        name = launch.name or "workspace run"
        self.running[name] = run
        self.say(f"Running {name} in the workspace (log: {run.log.relative_to(self.repo)}).")
        threading.Thread(target=self._wait_run, args=(name,), daemon=True).start()

    def _wait_run(self, name: str) -> None:
        run = self.running[name]
        code = run.wait()  # releases the workspace lock
        try:
            if code == 0:
                self.say(f"{name} finished.")
            else:
                text = run.log.read_text(errors="replace") if run.log.exists() else ""
                self.say(f"{name} failed (exit {code}); its log:", error=True)
                self.log_view.value = _pre(tail(text), "run-log")
            self._after()
        except Exception as error:  # a thread's errors would vanish: the page says them
            self.say(error_text(error, f"after {name}"), error=True)

    # ----- queue ---------------------------------------------------------------------------
    def start_queue(self) -> None:
        actions.queue_start(self.repo, self.jobs.value)
        self.say(f"Queue started with {self.jobs.value} worker(s).")
        self.update()

    def stop_queue(self) -> None:
        actions.queue_stop(self.repo)
        self.say("Queue stopping: running experiments finish, queued ones wait.")
        self.update()

    def kill_picked(self) -> None:
        running = self._picked_rows(states={"running"})
        if not running:
            raise ValueError("pick a running experiment first")
        actions.queue_kill(self.repo, [actions.target(self.repo, r) for r in running])
        self.say(f"Interrupted {', '.join(r['name'] for r in running)}.")
        self._after()

    def show_log(self) -> None:
        name = self.log_choice.value
        if not name:
            raise ValueError("no queued experiment has a log yet")
        text = actions.queue_logs(self.repo, name)
        self.log_view.value = _pre(tail(text) or f"{name} has printed nothing yet.", "queue-log")

    def update(self) -> None:
        """Queue state from the table (executor states of `dvc exp show`), logs of failures."""
        frame = self.app.frame
        queued = frame[frame["state"].isin(["queued", "running", "failed", "success", "lost"])
                       & (frame["kind"] == "experiment")]  # fmt: skip
        states = queued["state"].value_counts().to_dict()
        # succeeded through the queue: DVC keeps the task's process info (a pid) for those
        states["succeeded"] = int(((queued["state"] == "success") & queued["pid"].notna()).sum())
        parts = [
            f"{states.get(s, 0)} {s}"
            for s in ("queued", "running", "succeeded", "failed", "lost")
            if s != "lost" or states.get(s)
        ]
        if states.get("queued") and not states.get("running"):
            parts.append("none running: start the queue to run the queued ones")
        queued_count, running_count = states.get("queued", 0), states.get("running", 0)
        self.queue_info.value = (f"<span class='queue-counts' data-queued='{queued_count}' "
                                 f"data-running='{running_count}'>Queue: "
                                 f"{', '.join(parts)}</span>")  # fmt: skip
        names = [n for n in queued["name"] if isinstance(n, str)]
        with self.app.quiet():
            current = self.log_choice.value
            self.log_choice.options = names
            self.log_choice.value = current if current in names else (names[0] if names else None)
        if self._changed(".git/config"):  # remotes live there
            remotes, current = actions.remotes(self.repo), self.remote.value
            self.remote.options = remotes  # (a Dropdown keeps no value when its options change)
            self.remote.value = current if current in remotes else (remotes or [None])[0]
            for widget in (self.remote, self.push_button, self.pull_button):
                widget.layout.display = None if remotes else "none"
        if self._changed("params.yaml"):
            self.form.load()
        self._show_undo()

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

    def newly_started(self, frame) -> list[str]:
        """Ids of experiments queued from this page that have started (or finished) since the
        last look: the page picks them, so that their curves grow as they run and their
        Pokémon appear when they finish."""
        rows = frame[(frame["kind"] == "experiment") & frame["name"].isin(self.launched)]
        started = rows[rows["state"].isin(["running", "success", "failed", "lost"])]
        self.launched -= set(started["name"])
        return started.loc[started["state"].isin(["running", "success"]), "id"].tolist()

    def failure_log(self, name: str) -> str:
        """The tail of a failed queued experiment's log, read once."""
        if name not in self.failure_logs:
            try:
                self.failure_logs[name] = tail(actions.queue_logs(self.repo, name), 20)
            except DvcError as error:
                self.failure_logs[name] = f"(no log: {error})"
        return self.failure_logs[name]

    # ----- actions on picked ---------------------------------------------------------------
    def _picked_rows(self, states: set[str] | None = None) -> list[dict[str, Any]]:
        frame = self.app.frame
        rows = frame[frame["id"].isin(self.app.picked) & (frame["kind"] == "experiment")]
        if states:
            rows = rows[rows["state"].isin(states)]
        return rows.to_dict("records")

    def _one_picked(self) -> dict[str, Any]:
        rows = self._picked_rows()
        if len(rows) != 1:
            raise ValueError(f"pick exactly one experiment (not a baseline or the workspace); "
                             f"{len(rows)} picked")  # fmt: skip
        return rows[0]

    def _confirm(self, question: str, action: Callable[[], None]) -> None:
        yes = w.Button(description="Confirm", button_style="danger", icon="check")
        yes.add_class("confirm-yes")
        no = w.Button(description="Cancel", icon="times")

        def confirmed(_):
            self.confirm_box.children = []
            self._do(action)

        yes.on_click(confirmed)
        no.on_click(lambda _: setattr(self.confirm_box, "children", []))
        text = w.HTML(f"<div class='confirm-text' style='background:#fff8c5;padding:8px;"
                      f"border-radius:6px'>{question}</div>")  # fmt: skip
        self.confirm_box.children = [text, w.HBox([yes, no])]

    def apply_preview(self, row: dict[str, Any]) -> list[str]:
        """The params that applying `row` changes in the workspace, as 'key: old → new'."""
        frame = self.app.frame
        workspace = frame[frame["kind"] == "workspace"]
        if workspace.empty:
            return []
        current = workspace.iloc[0]
        changes = []
        for param in frame.attrs.get("params", []):
            new, old = row.get(param), current[param]
            if format_cell(new) != format_cell(old):
                changes.append(f"{param}: {format_cell(old)} → {format_cell(new)}")
        return changes

    def ask_apply(self) -> None:
        row = self._one_picked()
        if row["state"] != "success":
            raise ValueError(f"{row['name']} is {row['state']}: only a finished experiment can "
                             "be applied")  # fmt: skip
        (item,) = self._targets([row])  # by its full ref: `main` is the experiment, not the branch
        # the question at once, without Confirm, while git and dvc say what would be overwritten
        checking = "<div class='apply-checking'>Checking what it would overwrite…</div>"
        self.confirm_box.children = [self._question(self._apply_question(row, item) + checking)]
        try:
            what = actions.overwritten(self.repo, item)
        except BaseException:
            self.confirm_box.children = []
            raise
        self._ask_apply(row, item, what)

    def _apply_question(self, row: dict[str, Any], item: actions.Target) -> str:
        changes = self.apply_preview(row)
        question = (
            f"Apply {self._shown(item)} to the workspace? params.yaml, dvc.lock and the outputs "
            "become the experiment's."
        )
        if changes:
            items = "".join(f"<li>{html.escape(c)}</li>" for c in changes)
            return question + f"<ul class='apply-changes'>{items}</ul>"
        return question + "<br>The params are the same as the workspace's."

    def _ask_apply(self, row: dict[str, Any], item: actions.Target,
                   what: workspace.Overwritten, note: str = "") -> None:  # fmt: skip
        question = note + self._apply_question(row, item) + overwritten_html(what)
        self._confirm(question, lambda: self._apply(row, item, what))

    @staticmethod
    def _question(question: str) -> w.HTML:
        return w.HTML(f"<div class='confirm-text' style='background:#fff8c5;padding:8px;"
                      f"border-radius:6px'>{question}</div>")  # fmt: skip

    def _apply(self, row: dict[str, Any], item: actions.Target,
               shown: workspace.Overwritten) -> None:  # fmt: skip
        """At Confirm: apply, in the background, unless more would be overwritten than the
        question said (then it asks again with the new list)."""

        def apply_experiment(started: Callable[[Any], None]) -> None:
            try:
                number = actions.apply(self.repo, item, shown, started)
            except workspace.ChangedSinceAsked as changed:
                note = ("<div class='apply-changed' style='color:#cf222e'>The workspace changed "
                        f"since you were asked ({_files(changed.new)}): nothing was applied. "
                        "Look again:</div>")  # fmt: skip
                self._ask_apply(row, item, changed.now, note)
                self.say(f"Nothing applied: {changed}", error=True)
                return
            kept = len(workspace.entries(self.repo))
            self.say(f"Applied {item.name}: the workspace now holds its params and outputs; "
                     f"Undo brings back what was there (kept as undo entry {number}; {kept} "
                     "kept in all). Commit them with `git commit` (and `dvc push` to share the "
                     "outputs).")  # fmt: skip
            self._after()

        self._in_background(f"Applying {item.name}", apply_experiment)

    def ask_undo(self) -> None:
        plan = workspace.undo_plan(self.repo)
        if plan is None:
            self._show_undo()
            raise ValueError("nothing to undo: no Apply from this page is kept")
        self._confirm(undo_html(plan), lambda: self._undo(plan))

    def _undo(self, shown: workspace.UndoPlan) -> None:
        def undo_apply(started: Callable[[Any], None]) -> None:
            try:
                entry = actions.undo(self.repo, shown, started)
            except workspace.UndoChangedSinceAsked as changed:
                note = (
                    "<div class='apply-changed' style='color:#cf222e'>Changed since you were "
                    f"asked ({_files(changed.new)}): nothing was undone. Look again:</div>"
                )
                plan = changed.plan
                self._confirm(note + undo_html(plan), lambda: self._undo(plan))
                self.say(f"Nothing undone: {changed}", error=True)
                return
            left = len(workspace.entries(self.repo))
            more = f" {left} earlier Apply(s) can be undone too." if left else ""
            self.say(f"Undone: the workspace is back as it was before {entry.experiment} was "
                     f"applied.{more}")  # fmt: skip
            self._after()

        self._in_background("Undoing the last Apply", undo_apply)

    def _in_background(self, doing: str, work: Callable[[Callable[[Any], None]], None]) -> None:
        """Run `work(started)` on a thread, so that the page stays live and Cancel can stop
        the dvc process that `started` is handed (SIGINT, never a kill)."""
        if self.work is not None and self.work.is_alive():
            raise ValueError(f"{self.work.name} is still going: wait for it to finish")

        def started(process: Any) -> None:
            self._process = process
            self.cancel_button.layout.display = None

        def body() -> None:
            def run() -> None:
                work(started)

            run.__name__ = work.__name__  # what the log names
            try:
                self._do(run)
            finally:
                self._process = None
                self.cancel_button.layout.display = "none"
                self._show_undo()

        self.say(f"{doing}…")
        self.work = threading.Thread(target=body, name=doing, daemon=True)
        self.work.start()

    def wait_for_work(self, timeout: float | None = None) -> None:
        """Wait for the apply or undo going on (scripts and tests)."""
        if self.work is not None:
            self.work.join(timeout)

    def cancel_work(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            raise ValueError("nothing to cancel: no apply or undo is running dvc")
        interrupt(process)
        self.say("Cancelling: dvc stops where it is safe to; Undo brings back what was there.")

    def _show_undo(self) -> None:
        self.undo_button.layout.display = None if workspace.has_undo(self.repo) else "none"

    def _targets(self, rows: list[dict[str, Any]]) -> list[actions.Target]:
        """The picked rows as dvc will be given them: full refs (queue tasks: ids), checked
        against the repository now."""
        return [actions.target(self.repo, row) for row in rows]

    def _shown(self, item: actions.Target) -> str:
        """An experiment's name for a question, as it is; with its ref when the name alone
        would be misread (a teammate's `-A`, `main`)."""
        why = actions.name_warning(self.repo, item.name)
        name = f"<b>{html.escape(item.name)}</b>"
        if why:
            name += (
                f" <span class='odd-name' style='color:#9a6700'>(its name {html.escape(why)};"
                f" acted on by its ref <code>{html.escape(item.rev)}</code>)</span>"
            )
        return name

    def branch(self) -> None:
        (item,) = self._targets([self._one_picked()])
        new = self.branch_name.value.strip()
        actions.branch(self.repo, item, new)
        self.say(f"Made branch {new} from {item.name}.")
        self.branch_name.value = ""
        self._after()

    def rename(self) -> None:
        (item,) = self._targets([self._one_picked()])
        new = self.new_name.value.strip()
        actions.rename(self.repo, item, new)
        self.say(f"Renamed {item.name} to {new}.")
        self.new_name.value = ""
        self._after()

    def ask_remove(self) -> None:
        rows = self._picked_rows()
        if not rows:
            raise ValueError("pick the experiments to remove first")
        targets = self._targets(rows)  # resolved now; checked again at Confirm
        question = (
            f"Remove {len(targets)} experiment(s): "
            f"{', '.join(self._shown(item) for item in targets)}? "
            "Their git refs go; outputs stay in the DVC cache until `dvc gc`."
        )
        self._confirm(question, lambda: self._remove(targets))

    def _remove(self, targets: list[actions.Target]) -> None:
        actions.remove(self.repo, targets)  # nothing, and says so, if a ref moved since
        self.say(f"Removed {', '.join(item.name for item in targets)}.")
        self._after()

    def push(self) -> None:
        rows = self._picked_rows()
        if not rows:
            raise ValueError("pick the experiments to push first")
        self.say(actions.push(self.repo, self.remote.value, self._targets(rows)))
        self._after()

    def pull(self) -> None:
        self.say(actions.pull(self.repo, self.remote.value))
        self._after()
