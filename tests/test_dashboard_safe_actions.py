"""The page's actions against names that look like something else, failures part-way, and two
tabs on one workspace, each performed for real: a teammate's repository pushes experiments named
`-A`, `--queue`, `-f` and `main` to a bare git remote, and the user's repository pulls them
through the page; a grid whose second experiment DVC refuses; two Dashboards (two tabs, two
kernels' worth of state) on one repository."""

from __future__ import annotations

import contextlib
import html
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from bench.harness.quick_repo import exp_run, make_quick_repo, run
from dashboard import actions, dvc_cli
from dashboard.app import Dashboard
from dashboard.locks import WorkspaceLock

pytestmark = pytest.mark.timeout(600)


def refs(repo: Path) -> dict[str, str]:
    """{experiment name: commit} of the repository's experiment refs."""
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in actions.experiment_refs(repo).items()}


def states(app: Dashboard) -> dict[str, str]:
    experiments = app.state.frame[app.state.frame["kind"] == "experiment"]
    return dict(zip(experiments["name"], experiments["state"], strict=True))


def said(app: Dashboard) -> str:
    return html.unescape(app.panels.header.status.value)


def confirm(app: Dashboard) -> None:
    app.panels.actions.confirm_yes.click()


@pytest.fixture(scope="module")
def teammate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A teammate's repository with experiments named `good`, `shared`, `-A`, `--queue`, `-f`
    and `main`, pushed with real dvc commands to a bare git remote: (repository, remote)."""
    folder = tmp_path_factory.mktemp("teammate")
    theirs = make_quick_repo(folder / "theirs")
    for number, name in enumerate(["good", "shared", "-A", "--queue", "-f", "main"], start=1):
        exp_run(theirs, f"exp-{number}", f"train_lora.learning_rate={number}e-4")
        run(theirs, "dvc", "exp", "rename", "--", f"exp-{number}", name)  # real dvc names them
    assert set(refs(theirs)) == {"good", "shared", "-A", "--queue", "-f", "main"}
    run(folder, "git", "init", "-q", "--bare", "remote.git")
    run(theirs, "git", "remote", "add", "origin", str(folder / "remote.git"))
    run(theirs, "git", "push", "-q", "origin", "main")
    run(theirs, "dvc", "exp", "push", "origin", "--", *actions.experiment_refs(theirs))
    return theirs, folder / "remote.git"


@pytest.fixture
def shared(teammate: tuple[Path, Path], tmp_path: Path):
    """(the teammate's repository, the user's clone, the remote: a copy of the teammate's for
    this test). The user's clone has its own `shared` (diverged from the teammate's) and a
    queued experiment, `waiting`."""
    theirs, remote = teammate
    run(tmp_path, "git", "clone", "-q", "--mirror", str(remote), "remote.git")
    mine = tmp_path / "mine"
    run(tmp_path, "git", "clone", "-q", "-b", "main", "remote.git", str(mine))
    exp_run(mine, "shared", "train_lora.rank=2")  # the user's own, diverged from theirs
    actions.queue(mine, [actions.Launch({"train_lora.rank": 4}, "waiting")])
    return theirs, mine, tmp_path / "remote.git"


def pulled(mine: Path) -> Dashboard:
    app = Dashboard(mine, watch=False)
    app.panels.actions.pull_button.click()
    assert "Pulled --queue, -A, -f, good, main from origin" in said(app), said(app)
    assert states(app) == dict.fromkeys(
        ["good", "shared", "-A", "--queue", "-f", "main"], "success"
    ) | {"waiting": "queued"}
    return app


def test_removing_a_pulled_experiment_named_like_an_option_removes_only_it(shared):
    """`dvc exp remove -A` would remove every experiment of every commit, `dvc exp remove
    --queue` the whole queue: the page removes `refs/exps/.../-A` after `--`."""
    _, mine, _ = shared
    app = pulled(mine)
    pull_said = said(app)
    before = refs(mine)
    app.pick(["-A"])
    app.panels.actions.remove_button.click()
    question = html.unescape(app.panels.actions.question.value)
    confirm(app)
    assert refs(mine) == {name: sha for name, sha in before.items() if name != "-A"}
    assert "Removed -A." in said(app), said(app)
    assert "its name starts with '-'" in question and "refs/exps/" in question, question

    app.pick(["--queue", "good"])
    app.panels.actions.remove_button.click()
    confirm(app)
    assert "Removed --queue, good." in said(app), said(app)
    assert set(refs(mine)) == {"shared", "-f", "main"}
    assert states(app) == {
        "shared": "success",
        "-f": "success",
        "main": "success",
        "waiting": "queued",
    }  # the queue is as it was
    # the pull showed the names as what they are
    assert "'-A' starts with '-': dvc would read it as an option" in pull_said, pull_said
    assert "'main' is also a git branch" in pull_said


def test_pushing_an_experiment_named_like_force_does_not_force(shared):
    """`dvc exp push origin -f` would force-push every experiment of HEAD, the user's diverged
    `shared` over the teammate's: the page pushes `refs/exps/.../-f` after `--`, unforced."""
    theirs, mine, remote = shared
    app = pulled(mine)
    teammates = refs(theirs)["shared"]
    assert refs(mine)["shared"] != teammates  # diverged: the pull left the user's one
    app.pick(["-f"])
    app.panels.actions.push_button.click()
    assert "-f is up to date on Git remote 'origin'" in said(app), said(app)
    app.pick(["shared"])
    app.panels.actions.push_button.click()  # diverged: reported by dvc, never forced
    on_remote = run(mine, "git", "ls-remote", str(remote), "refs/exps/*").splitlines()
    remote_refs = {
        line.split("\t")[1].rsplit("/", 1)[1]: line.split("\t")[0] for line in on_remote
    }
    assert remote_refs["shared"] == teammates
    assert remote_refs == refs(theirs)


def test_experiments_named_like_branches_and_names_made_from_the_page(shared):
    """`main` the experiment, not the branch; new names that start with '-' or are a git
    branch, tag or revision are refused before dvc sees them."""
    theirs, mine, _ = shared
    app = pulled(mine)
    app.pick(["main"])
    app.panels.actions.branch_name.value = "from-main"
    app.panels.actions.branch_button.click()
    assert "Made branch from-main from main." in said(app), said(app)
    assert app.panels.actions.branch_name.value == ""  # done: the name field is cleared
    assert run(mine, "git", "rev-parse", "from-main").strip() == refs(mine)["main"]
    assert refs(mine)["main"] != run(mine, "git", "rev-parse", "main").strip()

    app.pick(["-f"])
    app.panels.actions.new_name.value = "plain-f"
    app.panels.actions.rename_button.click()
    assert "Renamed -f to plain-f." in said(app), said(app)
    assert refs(mine)["plain-f"] == refs(theirs)["-f"] and "-f" not in refs(mine)

    run(mine, "git", "tag", "v1")
    app.pick(["good"])
    for bad, why in [
        ("-x", "is not allowed"),
        ("main", "is a git branch"),
        ("v1", "is a git tag"),
        ("HEAD", "is a git revision"),
    ]:
        app.panels.actions.new_name.value = bad
        app.panels.actions.rename_button.click()
        assert why in said(app), (bad, said(app))
        assert app.panels.actions.new_name.value == bad  # refused: kept, to be corrected
        app.panels.actions.branch_name.value = bad
        app.panels.actions.branch_button.click()
        assert why in said(app), (bad, said(app))
    assert set(refs(mine)) == {"good", "shared", "-A", "--queue", "plain-f", "main"}
    assert run(mine, "git", "branch", "--list").split() == ["from-main", "*", "main"]

    app.panels.launch.form.inputs["train_lora.rank"].value = "8"
    for bad, why in [("v1", "is a git tag"), ("-n", "is not allowed")]:
        app.panels.launch.form.name.value = bad
        app.panels.launch.form.queue_button.click()
        assert why in html.unescape(app.panels.launch.form.message.value), bad
    with pytest.raises(ValueError, match="is a git branch"):
        actions.queue(mine, [actions.Launch({"train_lora.rank": 8}, "main")])
    with pytest.raises(ValueError, match="is a git revision"):
        actions.run_now(mine, actions.Launch({"train_lora.rank": 8}, "HEAD"))
    app.refresh(force=True)
    assert [name for name, state in states(app).items() if state == "queued"] == ["waiting"]


def test_applying_a_pulled_experiment_named_main_applies_the_experiment(shared):
    """`dvc exp apply main` would apply the branch main; the page applies the teammate's
    experiment `main` (learning rate 6e-4) by its ref."""
    theirs, mine, _ = shared
    app = pulled(mine)
    # the experiments' outputs in the user's cache, as `dvc pull` from a shared remote brings them
    shutil.copytree(theirs / ".dvc" / "cache", mine / ".dvc" / "cache", dirs_exist_ok=True)
    branch_params = (mine / "params.yaml").read_text()
    app.pick(["main"])
    app.panels.actions.apply_button.click()
    confirm(app)
    app.picked_actions.wait_for_work(300)
    assert "Applied main" in said(app), said(app)
    applied = yaml.safe_load((mine / "params.yaml").read_text())
    assert applied["train_lora"]["learning_rate"] == 6e-4
    assert yaml.safe_load(branch_params)["train_lora"]["learning_rate"] != 6e-4


def test_a_grid_that_fails_part_way_says_what_was_queued(tmp_path: Path, caplog):
    """The second of three is refused by DVC (its name is taken): the page says which were
    queued, which failed and why, which were not tried; never "Queueing..." for good."""
    repo = make_quick_repo(tmp_path / "repo")
    exp_run(repo, "grid-2", "train_lora.rank=2")
    app = Dashboard(repo, watch=False)
    form = app.panels.launch.form
    form.inputs["train_lora.rank"].value = "4, 8, 16"
    form.name.value = "grid"
    with caplog.at_level(logging.WARNING, logger="dashboard"):
        form.queue_button.click()
    text = said(app)
    assert "Queueing" not in text
    assert "queued grid-1; grid-2 failed: " in text, text
    assert "conflicts with existing experiment 'grid-2'" in text and "grid-3 not queued" in text
    assert "action-error" in app.panels.header.status.value
    assert states(app) == {"grid-1": "queued", "grid-2": "success"}
    assert form.name.value == "grid"  # the form keeps what was typed
    (record,) = [r for r in caplog.records if "grid-2 failed" in r.getMessage()]
    assert record.exc_info and isinstance(record.exc_info[1], actions.QueueError)
    assert record.exc_info[1].queued == ["grid-1"]
    app.pick(["grid-1"])  # a queue task has no ref yet: removed by its task id
    app.panels.actions.remove_button.click()
    confirm(app)
    assert "Removed grid-1." in said(app), said(app)
    assert states(app) == {"grid-2": "success"}


def test_a_missing_dvc_is_said_for_run_now_and_queue(tmp_path: Path, monkeypatch, caplog):
    repo = make_quick_repo(tmp_path / "repo")
    app = Dashboard(repo, watch=False)
    form = app.panels.launch.form
    monkeypatch.setattr(actions, "dvc_executable", lambda: str(tmp_path / "no" / "dvc"))
    monkeypatch.setattr(dvc_cli, "dvc_executable", lambda: str(tmp_path / "no" / "dvc"))
    form.inputs["train_lora.rank"].value = "8"
    with caplog.at_level(logging.WARNING, logger="dashboard"):
        form.run_button.click()
    assert "cannot run `dvc exp run` for an experiment: [Errno 2]" in said(app), said(app)
    assert any(r.exc_info for r in caplog.records)
    with WorkspaceLock(repo, "check"):  # the failed start left the workspace unlocked
        pass
    form.inputs["train_lora.rank"].value = "8, 16"
    form.queue_button.click()
    text = said(app)
    assert "nothing queued; #1 (train_lora.rank=8) failed: cannot run `dvc exp run --queue" in (
        text
    ), text
    assert "#2 (train_lora.rank=16) not queued" in text


def _wait(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.2)


def test_two_tabs_cannot_run_in_one_workspace_at_once(tmp_path: Path):
    repo = make_quick_repo(tmp_path / "repo")
    first, second = Dashboard(repo, watch=False), Dashboard(repo, watch=False)
    first.panels.launch.form.inputs["train_lora.max_steps"].value = "20000"  # about 10 s
    first.panels.launch.form.run_button.click()
    assert "Running workspace run in the workspace" in said(first), said(first)
    log = repo / said(first).split("(log: ")[1].split(")")[0]
    _wait(lambda: log.stat().st_size > 0)  # it has printed something
    printed = log.read_bytes()

    second.panels.launch.form.inputs["train_lora.max_steps"].value = "30"
    second.panels.launch.form.run_button.click()
    assert log.read_bytes().startswith(printed)  # not truncated
    text = said(second)
    assert "cannot run an experiment in the workspace now" in text, text
    assert f"run an experiment in the workspace (process {os.getpid()})" in text
    assert second.launcher.running == {}
    process = first.launcher.running["workspace run"].process
    held = set()
    for fd in Path(f"/proc/{process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed while listed
            held.add(os.readlink(fd))
    assert str(repo / ".dvc/tmp/dashboard/workspace.lock") in held  # dvc holds it too

    _wait(lambda: "finished" in said(first) or "failed" in said(first))
    assert "workspace run finished." in said(first), said(first)
    second.panels.launch.form.run_button.click()  # the lock is free again
    assert "Running workspace run" in said(second), said(second)
    _wait(lambda: "finished" in said(second) or "failed" in said(second))
    assert "workspace run finished." in said(second), said(second)


def test_a_confirm_after_another_tab_changed_the_experiment_does_nothing(tmp_path: Path):
    repo = make_quick_repo(tmp_path / "repo")
    exp_run(repo, "x", "train_lora.rank=8")
    exp_run(repo, "keep", "train_lora.rank=4")
    mine, other = Dashboard(repo, watch=False), Dashboard(repo, watch=False)
    mine.pick(["x"])
    mine.panels.actions.remove_button.click()  # the question is asked...
    other.pick(["x"])
    other.panels.actions.remove_button.click()
    confirm(other)  # ...another tab removes x and runs a new x
    assert "Removed x." in said(other)
    exp_run(repo, "x", "train_lora.rank=2")
    replaced = refs(repo)["x"]
    confirm(mine)
    text = said(mine)
    assert "nothing done: x was replaced by another experiment of that name" in text, text
    assert refs(repo)["x"] == replaced and "keep" in refs(repo)

    mine.refresh(force=True)
    mine.pick(["keep"])
    mine.panels.actions.remove_button.click()
    other.refresh(force=True)
    other.pick(["keep"])
    other.panels.actions.remove_button.click()
    confirm(other)
    confirm(mine)
    assert "nothing done: keep was removed" in said(mine), said(mine)
    assert set(refs(repo)) == {"x"}
