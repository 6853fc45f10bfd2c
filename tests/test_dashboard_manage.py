"""Launching and managing experiments from the dashboard, in-process, on real DVC repositories
of the quick pipeline with the real DVC queue: queue a grid, start the queue, see each state,
apply, rename, branch and remove; a failing stage and an interrupted run reported truthfully."""

from __future__ import annotations

import contextlib
import html
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.harness.quick_repo import exp_run, make_quick_repo, run
from dashboard import actions
from dashboard.app import Dashboard

pytestmark = pytest.mark.timeout(600)


def states(app: Dashboard) -> dict[str, str]:
    experiments = app.state.frame[app.state.frame["kind"] == "experiment"]
    assert experiments["name"].is_unique, experiments[["name", "state"]]
    return dict(zip(experiments["name"], experiments["state"], strict=True))


def wait_for(app: Dashboard, condition: Callable[[], bool], timeout: float = 180) -> None:
    """Refresh the app (as its watcher would) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.refresh()
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting; states: {states(app)}")


def stop_queue(repo: Path) -> None:
    with contextlib.suppress(actions.DvcError):
        actions.queue_stop(repo, kill=True)


@pytest.fixture
def app(tmp_path: Path):
    repo = make_quick_repo(tmp_path / "repo")
    dashboard = Dashboard(repo, watch=False)
    yield dashboard
    stop_queue(repo)


def test_queue_a_grid_run_it_and_apply_one(app: Dashboard):
    repo = app.store.path
    app.panels.launch.form.inputs["train_lora.rank"].value = "8, 16"
    app.panels.launch.form.name.value = "grid"
    app.panels.launch.form.queue_button.click()
    assert "Queued 2: grid-1, grid-2" in app.panels.header.status.value
    assert states(app) == {"grid-1": "queued", "grid-2": "queued"}
    assert "data-queued='2'" in app.panels.queue.info.value
    app.panels.queue.start_button.click()
    assert "Queue started" in app.panels.header.status.value, app.panels.header.status.value
    wait_for(app, lambda: states(app) == {"grid-1": "success", "grid-2": "success"})
    ids = app.state.frame.set_index("name").loc[["grid-1", "grid-2"], "id"].tolist()
    assert "0 queued, 0 running, 2 succeeded, 0 failed" in app.panels.queue.info.value
    assert set(ids) <= set(
        app.state.picked
    )  # launched here: picked as they finished, and compared
    assert set(ids) <= set(app.state.plots.images["rev"])
    drawn = {t.name for t in app.panels.curves.plot.figure.data if t.showlegend is not False}
    assert {"grid-1", "grid-2"} <= drawn
    ranks = app.state.frame.set_index("name")["train_lora.rank"]
    assert (ranks["grid-1"], ranks["grid-2"]) == (8, 16)
    assert app.state.frame.set_index("name").loc["grid-2", "type_fidelity_lora"] > 0

    app.pick(["grid-2"])
    app.panels.actions.apply_button.click()
    question = html.unescape(app.panels.actions.question.value)
    assert "Apply grid-2" in question.replace("<b>", "").replace("</b>", "")
    assert "train_lora.rank: 4 → 16" in question
    app.panels.actions.confirm_yes.click()  # Confirm
    app.picked_actions.wait_for_work(300)  # the apply runs in the background (the page stays live)
    assert "Applied grid-2" in app.panels.header.status.value, app.panels.header.status.value
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train_lora"]["rank"] == 16
    workspace = app.state.frame[app.state.frame["kind"] == "workspace"].iloc[0]
    assert workspace["train_lora.rank"] == 16

    app.pick(["grid-1"])
    app.panels.actions.new_name.value = "rank-eight"
    app.panels.actions.rename_button.click()
    assert "Renamed grid-1 to rank-eight" in app.panels.header.status.value, (
        app.panels.header.status.value
    )
    app.pick(["rank-eight"])
    app.panels.actions.branch_name.value = "rank-eight-branch"
    app.panels.actions.branch_button.click()
    assert "rank-eight-branch" in run(repo, "git", "branch", "--list")
    app.panels.actions.remove_button.click()
    assert "rank-eight" in app.panels.actions.question.value
    app.panels.actions.confirm_yes.click()
    assert set(states(app)) == {"grid-2"}


def test_experiments_stay_listed_when_head_moves_while_they_run(app: Dashboard):
    """Experiments belong to the commit they were queued on; a commit made meanwhile moves HEAD,
    and `dvc exp show` (HEAD's experiments) would drop them from the table."""
    repo = app.store.path
    app.launcher.queue([actions.Launch({"train_lora.rank": r}, f"r{r}") for r in (2, 8)])
    queued_on = app.state.frame.set_index("name").loc["r2", "parent"]
    (repo / "notes.txt").write_text("a commit made while experiments are queued\n")
    run(repo, "git", "add", "notes.txt")
    run(repo, "git", "commit", "-qm", "notes")
    app.refresh()
    assert states(app) == {"r2": "queued", "r8": "queued"}
    app.panels.queue.start_button.click()
    wait_for(app, lambda: states(app) == {"r2": "success", "r8": "success"})
    rows = app.state.frame.set_index("name")
    assert set(rows.loc[["r2", "r8"], "parent"]) == {queued_on}
    assert rows.loc["r8", "train_lora.rank"] == 8
    baselines = app.state.frame[app.state.frame["kind"] == "baseline"]
    assert len(baselines) == 2 and queued_on in set(baselines["id"])
    # a fresh page shows HEAD's experiments only (none yet); "all branches and commits" has them
    fresh = Dashboard(repo, watch=False)
    assert states(fresh) == {}
    fresh.panels.table.all_commits.value = True
    assert states(fresh) == {"r2": "success", "r8": "success"}


def test_a_running_experiment_shows_its_curve_as_it_grows(app: Dashboard):
    """Queued from the page, an experiment is picked as it starts: its loss curve so far is read
    from the folder its queue task runs in, and it stays picked when it finishes (and its id
    changes from the queue entry to the experiment's commit)."""
    app.launcher.queue([actions.Launch({"train_lora.max_steps": 20000}, "slow")])  # a 10 s run
    app.panels.queue.start_button.click()
    wait_for(app, lambda: states(app).get("slow") == "running")
    running = app.state.frame.set_index("name").loc["slow"]
    assert running["id"] in app.state.picked and Path(running["root"]).is_relative_to(
        app.store.path
    )

    def curve() -> pd.DataFrame:
        app.compare()  # what the watcher does when the curve file changes
        path = next(p for p in app.state.plots.curves if p.endswith("loss.tsv"))
        points = app.state.plots.curves[path]
        return points[points["rev"] == running["id"]]

    deadline = time.monotonic() + 60
    while curve().empty and time.monotonic() < deadline:
        time.sleep(0.3)
    signature = app.live_signature()  # before the read: a file grown after it reads as changed
    first = len(curve())
    assert 0 < first < 20000 and states(app)["slow"] == "running"
    assert "slow" in {t.name for t in app.panels.curves.plot.figure.data}
    missing = [
        cell["missing"]
        for row in app.panels.gallery.gallery.rows
        for cell in row["cells"]
        if "missing" in cell
    ]
    assert missing and "still running" in missing[0]
    while len(curve()) == first and states(app)["slow"] == "running":
        time.sleep(0.3)
    assert app.live_signature() != signature or states(app)["slow"] != "running"
    wait_for(app, lambda: states(app).get("slow") == "success")
    finished = app.state.frame.set_index("name").loc["slow", "id"]
    assert finished != running["id"] and finished in app.state.picked
    path = next(p for p in app.state.plots.curves if p.endswith("loss.tsv"))
    assert (app.state.plots.curves[path]["rev"] == finished).sum() == 20000


def test_apply_warns_of_uncommitted_changes(app: Dashboard):
    repo = app.store.path
    actions.queue(repo, [actions.Launch({"train_lora.rank": 8}, "eight")])
    app.launcher.start_queue(1)
    wait_for(app, lambda: states(app) == {"eight": "success"})
    (repo / "stage.py").write_text((repo / "stage.py").read_text() + "\n# edited\n")
    app.pick(["eight"])
    app.panels.actions.apply_button.click()
    warning = app.panels.actions.question.value
    assert "Edited files: stage.py" in warning and "Undo" in warning
    app.panels.actions.confirm_no.click()  # Cancel
    assert app.state.question is None
    assert "edited" in (repo / "stage.py").read_text()


def test_a_failing_stage_and_an_interrupted_run_are_reported(app: Dashboard):
    repo = app.store.path
    actions.queue(
        repo,
        [
            actions.Launch({"train_lora.rank": 0}, "broken"),  # the stage exits with an error
            actions.Launch({"train_lora.max_steps": 20000}, "slow"),  # 10 s: time to interrupt it
            actions.Launch({"train_lora.rank": 2}, "fine"),
        ],
    )
    app.panels.queue.jobs.value = 2
    app.panels.queue.start_button.click()
    wait_for(app, lambda: states(app).get("slow") == "running")
    app.pick(["slow"])
    app.panels.queue.kill_button.click()
    assert "Interrupted slow" in app.panels.header.status.value, app.panels.header.status.value
    wait_for(
        app, lambda: set(states(app).values()) <= {"success", "failed"} and len(states(app)) == 3
    )
    assert states(app) == {"broken": "failed", "slow": "failed", "fine": "success"}
    app.render_table()
    assert "broken" in app.panels.table.count.value and "must be positive" in html.unescape(
        app.panels.table.count.value
    )
    assert "failed" in app.panels.table.count.value
    app.panels.table.table.sort = {"column": "name", "descending": False}  # the page keeps working
    assert [app.panels.table.table.row_info[i]["name"] for i in app.panels.table.table.order][
        :3
    ] == ["broken", "fine", "main"]
    assert app.state.frame.set_index("name").loc["fine", "train_lora.rank"] == 2
    assert app.state.frame.set_index("name").loc["broken", "train_lora.rank"] == 0
    assert math.isnan(app.state.frame.set_index("name").loc["broken", "type_fidelity_lora"])


def test_values_reach_dvc_as_literal_strings(app: Dashboard, tmp_path: Path):
    repo = app.store.path
    marker = tmp_path / "pwned"
    value = f"$(touch {marker}); `touch {marker}`"
    actions.queue(repo, [actions.Launch({"train_lora.validation_prompt": value}, "literal")])
    app.refresh(force=True)
    row = app.state.frame.set_index("name").loc["literal"]
    assert row["train_lora.validation_prompt"] == value
    assert not marker.exists()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(_parent(int(stat.parent.name)), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@pytest.mark.slow
def test_twenty_queued_at_once_with_a_failing_stage(app: Dashboard):
    """Twenty experiments queued at once on two workers, one stage fails: each state is reported
    as it is (never "lost" while a worker collects a result), and every result is its own."""
    rates = {f"q-{n:02d}": round(1e-5 * n, 8) for n in range(1, 20)}
    launches = [
        actions.Launch({"train_lora.learning_rate": lr}, name) for name, lr in rates.items()
    ]
    launches.insert(3, actions.Launch({"train_lora.rank": 0}, "broken"))
    app.launcher.queue(launches)
    assert len(states(app)) == 20 and set(states(app).values()) == {"queued"}
    assert "data-queued='20'" in app.panels.queue.info.value
    app.panels.queue.jobs.value = 2
    app.panels.queue.start_button.click()
    seen: set[str] = set()

    def finished() -> bool:
        seen.update(states(app).values())
        return set(states(app).values()) <= {"success", "failed"}

    wait_for(app, finished, timeout=500)
    assert seen <= {"queued", "running", "success", "failed"}, seen
    final = states(app)
    assert final.pop("broken") == "failed"
    assert final == dict.fromkeys(rates, "success")
    rows = app.state.frame.set_index("name")
    for name, lr in rates.items():  # each result is its own: the quick stage's formula
        speed = min(0.5, lr * 400) * (1 + math.log2(4) / 4)
        assert rows.loc[name, "train_lora.learning_rate"] == pytest.approx(lr)
        assert rows.loc[name, "type_fidelity_lora"] == pytest.approx(
            min(1.0, 0.2 + speed), abs=1e-4
        )
    app.render_table()
    text = html.unescape(app.panels.table.count.value)
    assert "broken failed" in text and "must be positive" in text
    assert "19 success" in text and "1 failed" in text


def test_a_killed_queue_worker_leaves_its_experiment_lost_not_running(app: Dashboard):
    """The worker running `slow` dies with everything it started (as when the machine kills
    it): `slow` reads as lost, never running, and the other worker carries on with `a`."""
    app.launcher.queue(
        [
            actions.Launch({"train_lora.max_steps": 20000}, "slow"),  # time to kill it
            actions.Launch({"train_lora.rank": 2}, "a"),
        ]
    )
    app.panels.queue.jobs.value = 2
    app.panels.queue.start_button.click()
    wait_for(app, lambda: states(app).get("slow") == "running")
    worker = _parent(int(app.state.frame.set_index("name").loc["slow", "pid"]))
    assert worker not in (os.getpid(), os.getppid())
    # the worker and its run: an orphaned `dvc exp exec-run` would finish the experiment
    for pid in [worker, *_descendants(worker)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(app, lambda: states(app) == {"slow": "lost", "a": "success"})
    app.render_table()
    assert "slow lost: its run stopped without a result" in html.unescape(
        app.panels.table.count.value
    )
    assert "1 lost" in app.panels.queue.info.value
    assert app.state.frame.set_index("name").loc["a", "train_lora.rank"] == 2


def test_push_to_and_pull_from_a_git_and_a_dvc_remote(tmp_path: Path):
    """Share an experiment through a bare git repository and a DVC remote folder, and get it in
    a teammate's clone, images included."""
    mine = make_quick_repo(tmp_path / "mine")
    exp_run(mine, "shared", "train_lora.rank=8")
    run(tmp_path, "git", "init", "-q", "--bare", "remote.git")
    run(mine, "git", "remote", "add", "origin", str(tmp_path / "remote.git"))
    run(mine, "git", "push", "-q", "origin", "main")
    app = Dashboard(mine, watch=False)
    assert (
        app.panels.actions.remote.options == ("origin",)
        and app.panels.actions.remote.value == "origin"
    )
    assert app.panels.actions.push_button.layout.display is None
    app.pick([])
    app.panels.actions.push_button.click()
    assert "pick the experiments to push first" in app.panels.header.status.value
    app.pick(["shared"])
    # no DVC remote yet: the refs travel, the outputs cannot
    app.panels.actions.push_button.click()
    said = html.unescape(app.panels.header.status.value)
    assert "Pushed experiment shared" in said and "no default DVC remote" in said, said
    assert "/shared" in run(mine, "git", "ls-remote", "origin", "refs/exps/*")
    storage = tmp_path / "storage"
    run(mine, "dvc", "remote", "add", "--local", "-d", "storage", str(storage))
    app.panels.actions.push_button.click()
    said = html.unescape(app.panels.header.status.value)
    assert "shared is up to date on Git remote 'origin'" in said, said
    assert " files uploaded" in said and "no default DVC remote" not in said, said
    assert any(path.is_file() for path in storage.rglob("*"))

    theirs = tmp_path / "theirs"
    run(tmp_path, "git", "clone", "-q", "-b", "main", "remote.git", str(theirs))
    run(theirs, "dvc", "remote", "add", "--local", "-d", "storage", str(storage))
    teammate = Dashboard(theirs, watch=False)
    assert states(teammate) == {}
    teammate.panels.actions.pull_button.click()
    said = html.unescape(teammate.panels.header.status.value)
    assert "Pulled shared from origin." in said, said
    assert states(teammate) == {"shared": "success"}
    row = teammate.state.frame.set_index("name").loc["shared"]
    assert row["train_lora.rank"] == 8
    assert (
        row["type_fidelity_lora"]
        == app.state.frame.set_index("name").loc["shared", "type_fidelity_lora"]
    )
    images = teammate.store.plots([row["id"]]).images  # outputs came from the DVC remote
    assert not images.empty and all(Path(file).is_file() for file in images["file"])
    teammate.panels.actions.pull_button.click()
    assert "Nothing new to pull" in teammate.panels.header.status.value
