"""The commands that act on experiments and the workspace, apart from the controller that reads
and draws them (dashboard.app.Dashboard):

    Launcher       the Run tab: queue, run now, start and stop the queue, kill the picked,
                   show a log
    PickedActions  the actions bar: apply and undo (in the background, with Cancel), branch,
                   rename, remove, push, pull, and the question a destructive one asks first

Each is given the controller's narrow interface (`Controller`: the state, the repository, the
one command path `perform`, `refresh`, the status line and the two renders they change) and
is what the panels call: a button runs `commands.perform(commands.<command>)`. They act through
dashboard.actions and dashboard.workspace, never through widgets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dashboard import actions, lora_files, questions, views, workspace
from dashboard.dvc_cli import interrupt
from dashboard.state import DashboardState
from dashboard.state import ExperimentState as S


class Controller(Protocol):
    """What the commands need of the controller."""

    state: DashboardState
    repo: Path

    def perform(
        self,
        action: Callable[[], None],
        name: str | None = None,
        banner: bool = False,
        locked: bool = True,
    ) -> bool: ...
    def refresh(self, force: bool = False) -> bool: ...
    def say(self, message: str, error: bool = False) -> None: ...
    def render_actions(self) -> None: ...
    def render_queue(self) -> None: ...
    def download(self, name: str, data: bytes, mime: str) -> None: ...
    def outside(self, path: str) -> str | None: ...


def targets(repo: Path, rows: list[dict[str, Any]]) -> list[actions.Target]:
    """The picked rows as dvc will be given them: full refs (queue tasks: ids), checked
    against the repository now."""
    return [actions.target(repo, row) for row in rows]


class Launcher:
    """The Run tab's commands: launch the form's experiments and drive the DVC queue."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.perform = controller.perform
        self.running: dict[str, actions.WorkspaceRun] = {}  # workspace runs started here

    def queue(self, launches: list[actions.Launch]) -> list[str]:
        """Queue the launches; the names DVC gave them."""
        c = self.controller
        c.say(f"Queueing {len(launches)} experiment(s)...")
        try:
            names = actions.queue(c.repo, launches)
        except actions.QueueError as error:  # part of a grid queued: show and follow those
            c.state.launched.update(error.queued)
            if error.queued:
                c.refresh(force=True)
            raise
        c.state.launched.update(names)
        c.say(f"Queued {len(names)}: {', '.join(names)}. Start the queue to run them.")
        c.refresh(force=True)
        return names

    def run_now(self, launch: actions.Launch) -> None:
        """Start a workspace run; refused (WorkspaceBusy, naming the holder) while another tab
        or process holds the workspace lock, which the run holds until it ends."""
        c = self.controller
        run = actions.run_now(c.repo, launch)
        name = launch.name or "workspace run"
        self.running[name] = run
        c.say(f"Running {name} in the workspace (log: {run.log.relative_to(c.repo)}).")
        threading.Thread(target=self._wait_run, args=(name,), daemon=True).start()

    def _wait_run(self, name: str) -> None:
        c = self.controller
        run = self.running[name]
        code = run.wait()  # releases the workspace lock

        def after_run() -> None:
            if code == 0:
                c.say(f"{name} finished.")
            else:
                text = run.log.read_text(errors="replace") if run.log.exists() else ""
                c.state.log_html = questions.pre(questions.tail(text), "run-log")
                c.render_queue()
                c.say(f"{name} failed (exit {code}); its log:", error=True)
            c.refresh(force=True)

        c.perform(after_run, f"after {name}")

    def start_queue(self, jobs: int) -> None:
        actions.queue_start(self.controller.repo, jobs)
        self.controller.say(f"Queue started with {jobs} worker(s).")
        self.controller.render_queue()

    def stop_queue(self) -> None:
        actions.queue_stop(self.controller.repo)
        self.controller.say("Queue stopping: running experiments finish, queued ones wait.")
        self.controller.render_queue()

    def kill_picked(self) -> None:
        c = self.controller
        running = views.picked_rows(c.state.frame, c.state.picked, {S.RUNNING})
        if not running:
            raise ValueError("pick a running experiment first")
        actions.queue_kill(c.repo, targets(c.repo, running))
        c.say(f"Interrupted {', '.join(r['name'] for r in running)}.")
        c.refresh(force=True)

    def show_log(self, name: str | None) -> None:
        if not name:
            raise ValueError("no queued experiment has a log yet")
        text = questions.tail(actions.queue_logs(self.controller.repo, name))
        self.controller.state.log_html = questions.pre(
            text or f"{name} has printed nothing yet.", "queue-log"
        )
        self.controller.render_queue()


class PickedActions:
    """The actions bar's commands on the picked experiments. A destructive one asks first
    (`ask`; Confirm runs what it was asked with); apply and undo run dvc on a thread of their
    own (`work`), which Cancel interrupts."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.perform = controller.perform
        self.work: threading.Thread | None = None  # the apply or undo going on, if any
        self._process: Any = None  # its dvc process, for Cancel
        self._confirmed: Callable[[], None] | None = None  # what Confirm does

    # ----- the question --------------------------------------------------------------------
    def ask(self, question: str, confirmed: Callable[[], None] | None) -> None:
        """Show a question; Confirm runs `confirmed` (None: no Confirm yet, a note while the
        question's facts are found out; "": no question)."""
        state = self.controller.state
        state.question = question or None
        state.can_confirm = confirmed is not None
        self._confirmed = confirmed
        self.controller.render_actions()

    def confirm(self) -> None:
        action = self._confirmed
        self.ask("", None)
        if action is not None:
            self.perform(action, getattr(action, "__name__", "confirmed action"))

    def dismiss(self) -> None:
        self.ask("", None)

    # ----- the picked ----------------------------------------------------------------------
    def _one_picked(self) -> dict[str, Any]:
        state = self.controller.state
        rows = views.picked_rows(state.frame, state.picked)
        if len(rows) != 1:
            raise ValueError(
                "pick exactly one experiment (not a baseline or the workspace); "
                f"{len(rows)} picked"
            )
        return rows[0]

    def _shown(self, item: actions.Target) -> str:
        warning = actions.name_warning(self.controller.repo, item.name)
        return questions.shown_name(item.name, item.rev, warning)

    # ----- apply and undo ------------------------------------------------------------------
    def ask_apply(self) -> None:
        row = self._one_picked()
        if row["state"] != S.SUCCESS:
            raise ValueError(
                f"{row['name']} is {row['state']}: only a finished experiment can be applied"
            )
        # by its full ref: `main` is the experiment, not the branch
        (item,) = targets(self.controller.repo, [row])
        # the question at once, without Confirm, while git and dvc say what would be overwritten
        checking = "<div class='apply-checking'>Checking what it would overwrite…</div>"
        self.ask(self._apply_question(row, item) + checking, None)
        try:
            what = actions.overwritten(self.controller.repo, item)
        except BaseException:
            self.ask("", None)
            raise
        self._ask_apply(row, item, what)

    def _apply_question(self, row: dict[str, Any], item: actions.Target) -> str:
        return questions.apply_question(
            self._shown(item), views.apply_preview(self.controller.state.frame, row)
        )

    def _ask_apply(
        self,
        row: dict[str, Any],
        item: actions.Target,
        what: workspace.Overwritten,
        note: str = "",
    ) -> None:
        question = note + self._apply_question(row, item) + questions.overwritten_html(what)

        def apply() -> None:
            self._apply(row, item, what)

        self.ask(question, apply)

    def _apply(
        self, row: dict[str, Any], item: actions.Target, shown: workspace.Overwritten
    ) -> None:
        """At Confirm: apply, in the background, unless more would be overwritten than the
        question said (then it asks again with the new list)."""
        c = self.controller

        def apply_experiment(started: Callable[[Any], None]) -> None:
            try:
                number = actions.apply(c.repo, item, shown, started)
            except workspace.ChangedSinceAsked as changed:
                note = questions.changed_note("applied", changed.new)
                self._ask_apply(row, item, changed.now, note)
                c.say(f"Nothing applied: {changed}", error=True)
                return
            kept = len(workspace.entries(c.repo))
            c.say(
                f"Applied {item.name}: the workspace now holds its params and outputs; Undo "
                f"brings back what was there (kept as undo entry {number}; {kept} kept in "
                "all). Commit them with `git commit` (and `dvc push` to share the outputs)."
            )
            c.refresh(force=True)

        self._in_background(f"Applying {item.name}", apply_experiment)

    def ask_undo(self) -> None:
        plan = workspace.undo_plan(self.controller.repo)
        if plan is None:
            self.controller.state.can_undo = False
            self.controller.render_actions()
            raise ValueError("nothing to undo: no Apply from this page is kept")
        self._ask_undo(plan)

    def _ask_undo(self, plan: workspace.UndoPlan, note: str = "") -> None:
        def undo() -> None:
            self._undo(plan)

        self.ask(note + questions.undo_html(plan), undo)

    def _undo(self, shown: workspace.UndoPlan) -> None:
        c = self.controller

        def undo_apply(started: Callable[[Any], None]) -> None:
            try:
                entry = actions.undo(c.repo, shown, started)
            except workspace.UndoChangedSinceAsked as changed:
                self._ask_undo(changed.plan, questions.changed_note("undone", changed.new))
                c.say(f"Nothing undone: {changed}", error=True)
                return
            left = len(workspace.entries(c.repo))
            more = f" {left} earlier Apply(s) can be undone too." if left else ""
            c.say(
                f"Undone: the workspace is back as it was before {entry.experiment} was "
                f"applied.{more}"
            )
            c.refresh(force=True)

        self._in_background("Undoing the last Apply", undo_apply)

    def _in_background(self, doing: str, work: Callable[[Callable[[Any], None]], None]) -> None:
        """Run `work(started)` on a thread, through the command path, so that the page stays
        live and Cancel can stop the dvc process that `started` is handed (SIGINT, never a
        kill)."""
        if self.work is not None and self.work.is_alive():
            raise ValueError(f"{self.work.name} is still going: wait for it to finish")
        c = self.controller

        def started(process: Any) -> None:
            self._process = process
            c.state.working = True
            c.render_actions()

        def body() -> None:
            def run() -> None:
                work(started)

            try:
                self.perform(run, work.__name__, locked=False)
            finally:
                self._process = None
                c.state.working = False
                c.state.can_undo = workspace.has_undo(c.repo)
                c.render_actions()

        c.say(f"{doing}…")
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
        self.controller.say(
            "Cancelling: dvc stops where it is safe to; Undo brings back what was there."
        )

    # ----- git refs and remotes ------------------------------------------------------------
    def branch(self, new: str) -> None:
        """Make branch `new` of the picked (the panel clears its name fields when it worked)."""
        (item,) = targets(self.controller.repo, [self._one_picked()])
        actions.branch(self.controller.repo, item, new)
        self.controller.say(f"Made branch {new} from {item.name}.")
        self.controller.refresh(force=True)

    def rename(self, new: str) -> None:
        """Rename the picked to `new` (the panel clears its name fields when it worked)."""
        (item,) = targets(self.controller.repo, [self._one_picked()])
        actions.rename(self.controller.repo, item, new)
        self.controller.say(f"Renamed {item.name} to {new}.")
        self.controller.refresh(force=True)

    def ask_remove(self) -> None:
        c = self.controller
        rows = views.picked_rows(c.state.frame, c.state.picked)
        if not rows:
            raise ValueError("pick the experiments to remove first")
        chosen = targets(c.repo, rows)  # resolved now; checked again at Confirm
        question = (
            f"Remove {len(chosen)} experiment(s): "
            f"{', '.join(self._shown(item) for item in chosen)}? "
            "Their git refs go; outputs stay in the DVC cache until `dvc gc`."
        )

        def remove() -> None:
            actions.remove(c.repo, chosen)  # nothing, and says so, if a ref moved since
            c.say(f"Removed {', '.join(item.name for item in chosen)}.")
            c.refresh(force=True)

        self.ask(question, remove)

    def push(self, remote: str | None) -> None:
        c = self.controller
        rows = views.picked_rows(c.state.frame, c.state.picked)
        if not rows:
            raise ValueError("pick the experiments to push first")
        c.say(actions.push(c.repo, remote, targets(c.repo, rows)))
        c.refresh(force=True)

    def pull(self, remote: str | None) -> None:
        self.controller.say(actions.pull(self.controller.repo, remote))
        self.controller.refresh(force=True)

    # ----- the LoRA files ------------------------------------------------------------------
    def download_lora(self) -> None:
        """The picked row's outputs/lora (the workspace's, a commit's or an experiment's, read
        at its commit) as a zip that the browser saves."""
        c = self.controller
        frame = c.state.frame
        rows = frame[frame["id"].isin(c.state.picked)].to_dict("records")
        if len(rows) != 1:
            raise ValueError(f"pick one row to download its LoRA files; {len(rows)} picked")
        (row,) = rows
        if row["kind"] == "experiment":
            if row["state"] != S.SUCCESS:
                raise ValueError(f"{row['name']} is {row['state']}: it has no LoRA files yet")
            rev = targets(c.repo, [row])[0].commit
        else:
            rev = None if row["kind"] == "workspace" else str(row["id"])
        name = lora_files.zip_name(str(row["name"]))
        c.say(f"Reading the LoRA files of {row['name']}…")
        data = lora_files.lora_zip(c.repo, rev, str(row["name"]), c.outside)
        c.download(name, data, "application/zip")
        c.say(
            f"Downloading {name} ({len(data) / 1e6:.1f} MB): the LoRA in the diffusers and "
            "kohya formats, its model card and samples, its params."
        )
