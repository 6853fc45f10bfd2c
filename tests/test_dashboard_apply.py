"""Apply never loses work: on real git + DVC repositories of the quick pipeline, what an apply
overwrites is listed exactly (edited files, untracked files the experiment also has, changed DVC
outputs), checked again at Confirm, kept under refs/pokemon-lora/undo before `dvc exp apply`
runs, and brought back by Undo, however many applies come in between."""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bench.harness.quick_repo import exp_run, make_quick_repo, run
from dashboard import dvc_cli, workspace
from dashboard.app import Dashboard
from dashboard.dvc_cli import DvcError, interrupt
from dashboard.locks import WorkspaceLock

pytestmark = pytest.mark.timeout(600)

NOTEBOOK = '{"cells": [{"cell_type": "code", "source": ["my = 1  # unsaved elsewhere"]}]}\n'
IMAGE = "outputs/generated/lora/a-pokemon/seed-0.png"  # a file of the output outputs/generated


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A committed quick repository (train_lora.rank 4) with experiments `eight` (rank 8),
    `withnotes` (rank 2, which also holds a file notes.txt that the baseline does not track)
    and `main` (rank 16: named like the branch); a clean workspace."""
    repo = make_quick_repo(tmp_path_factory.mktemp("apply") / "repo")
    exp_run(repo, "eight", "train_lora.rank=8")
    (repo / "notes.txt").write_text("the experiment's notes\n")
    run(repo, "git", "add", "notes.txt")  # staged: `dvc exp run` commits it with the experiment
    exp_run(repo, "withnotes", "train_lora.rank=2")
    run(repo, "git", "rm", "-q", "--cached", "--ignore-unmatch", "notes.txt")
    (repo / "notes.txt").unlink()
    exp_run(repo, "main", "train_lora.rank=16")
    run(repo, "git", "checkout", "-q", "--", ".")
    run(repo, "dvc", "checkout", "-q", "--force")
    assert run(repo, "git", "status", "--porcelain") == ""
    return repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(template, copy, symlinks=True)
    return copy


def ref(repo: Path, name: str) -> str:
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
    (found,) = [r for r in refs if re.fullmatch(rf"refs/exps/../.{{38}}/{re.escape(name)}", r)]
    return found


def rank(repo: Path) -> int:
    return yaml.safe_load((repo / "params.yaml").read_text())["train_lora"]["rank"]


def state(repo: Path) -> dict[str, object]:
    """Everything Undo must bring back: the bytes of the files, what git and dvc say."""
    files = ["params.yaml", "dvc.lock", "stage.py", "notebooks/scratch.ipynb", "notes.txt", IMAGE]
    return {
        "files": {f: (repo / f).read_bytes() if (repo / f).exists() else None for f in files},
        "git": run(repo, "git", "status", "--porcelain", "--untracked-files=all"),
        "staged": run(repo, "git", "diff", "--cached", "--name-only"),
        "dvc": {  # its lists come in no fixed order
            group: {kind: sorted(paths) for kind, paths in kinds.items()}
            for group, kinds in json.loads(
                run(repo, "dvc", "data", "status", "--granular", "--json")
            ).items()
        },
    }


def edit_params(repo: Path, new_rank: int) -> None:
    text = (repo / "params.yaml").read_text()
    edited = re.sub(r"(?m)^(  rank: )\d+", rf"\g<1>{new_rank}", text, count=1)
    (repo / "params.yaml").write_text(edited + "# my note, in no commit\n")
    assert rank(repo) == new_rank


def test_two_applies_then_two_undos_bring_every_edit_back(repo: Path):
    """The issue's test: edit params.yaml and an untracked notebook, apply one experiment,
    apply another, Undo twice: both edits are back, byte for byte, and so is a changed output."""
    edit_params(repo, 5)
    (repo / "notebooks").mkdir()
    (repo / "notebooks" / "scratch.ipynb").write_text(NOTEBOOK)
    (repo / IMAGE).write_bytes(b"my own picture")
    run(repo, "git", "add", "stage.py")  # something staged too (unchanged content)
    before = state(repo)

    what = workspace.overwritten(repo, ref(repo, "eight"))
    assert what.edited == ["params.yaml"] and what.untracked == []
    assert list(what.outputs) == ["outputs/generated"]
    assert "1 modified" in what.outputs["outputs/generated"]
    first = workspace.apply(repo, ref(repo, "eight"), what)
    assert rank(repo) == 8 and (repo / IMAGE).read_bytes() != b"my own picture"
    applied_eight = state(repo)
    workspace.apply(repo, ref(repo, "main"))
    assert rank(repo) == 16
    # DVC's own stash now holds only the second apply's workspace: the first edit is not there
    dvc_stash = run(repo, "git", "show", "refs/exps/apply/stash:params.yaml")
    assert "rank: 5" not in dvc_stash and "rank: 8" in dvc_stash
    assert [e.number for e in workspace.entries(repo)] == [first, first + 1]

    workspace.undo(repo)
    assert rank(repo) == 8
    assert state(repo) == applied_eight
    workspace.undo(repo)
    assert state(repo) == before
    assert rank(repo) == 5 and "# my note, in no commit" in (repo / "params.yaml").read_text()
    assert (repo / "notebooks" / "scratch.ipynb").read_text() == NOTEBOOK
    assert (repo / IMAGE).read_bytes() == b"my own picture"
    assert not workspace.has_undo(repo) and workspace.undo_plan(repo) is None
    assert not (repo / workspace.UNDO_FILES).exists() or not any(
        (repo / workspace.UNDO_FILES).iterdir()
    )
    with pytest.raises(DvcError, match="nothing to undo"):
        workspace.undo(repo)


def test_the_list_is_exact(repo: Path):
    """Untracked files that the experiment also has are listed (it overwrites them), untracked
    files it lacks are not (dvc copies them back), nor files whose content is the experiment's;
    outputs changed since the last checkout are, with what changed."""
    (repo / "notes.txt").write_text("the experiment's notes\n")  # the experiment's very content
    (repo / "scratch.txt").write_text("the experiment has no such file\n")
    assert workspace.overwritten(repo, ref(repo, "withnotes")).paths() == set()
    (repo / "notes.txt").write_text("mine\n")
    (repo / "stage.py").write_text((repo / "stage.py").read_text() + "# edited\n")
    shutil.rmtree(repo / "outputs" / "generated" / "base" / "a-pokemon")
    (repo / "outputs" / "generated" / "lora" / "new.png").write_bytes(b"new")
    what = workspace.overwritten(repo, ref(repo, "withnotes"))
    assert what.edited == ["stage.py"]
    assert what.untracked == ["notes.txt"]
    assert what.outputs == {"outputs/generated": "files 1 added, 6 deleted"}
    workspace.apply(repo, ref(repo, "withnotes"), what)
    assert (repo / "notes.txt").read_text() == "the experiment's notes\n"
    assert (repo / "scratch.txt").exists() and rank(repo) == 2
    assert not (repo / "outputs" / "generated" / "lora" / "new.png").exists()
    workspace.undo(repo)
    assert (repo / "notes.txt").read_text() == "mine\n"
    assert (repo / "stage.py").read_text().endswith("# edited\n")
    assert (repo / "outputs" / "generated" / "lora" / "new.png").read_bytes() == b"new"
    assert not (repo / "outputs" / "generated" / "base" / "a-pokemon").exists()
    assert rank(repo) == 4


def confirm_text(app: Dashboard) -> str:
    """The question's text, as a person reads it (no tags)."""
    return html.unescape(re.sub(r"<[^>]+>", "", app.panels.actions.question.value))


def click_confirm(app: Dashboard) -> None:
    app.panels.actions.confirm_yes.click()
    app.picked_actions.wait_for_work(300)


def test_the_page_lists_rechecks_at_confirm_applies_and_undoes(repo: Path):
    app = Dashboard(repo, watch=False)
    assert app.panels.actions.undo_button.layout.display == "none"
    edit_params(repo, 5)
    (repo / "notes.txt").write_text("mine\n")
    (repo / IMAGE).write_bytes(b"my own picture")
    app.refresh(force=True)
    app.pick(["withnotes"])
    app.panels.actions.apply_button.click()
    question = confirm_text(app)
    assert "Edited files: params.yaml" in question
    assert "Untracked files that the experiment also has: notes.txt" in question
    assert "outputs/generated (files 1 modified)" in question
    assert "Undo" in question and "stage.py" not in question

    # changed between the question and Confirm: it asks again, and applies nothing
    (repo / "stage.py").write_text((repo / "stage.py").read_text() + "# edited meanwhile\n")
    click_confirm(app)
    assert rank(repo) == 5 and (repo / "notes.txt").read_text() == "mine\n"
    again = confirm_text(app)
    assert "changed since you were asked (stage.py)" in again, again
    assert "Edited files: params.yaml, stage.py" in again
    assert "Nothing applied" in app.panels.header.status.value

    click_confirm(app)
    assert "Applied withnotes" in app.panels.header.status.value, app.panels.header.status.value
    assert rank(repo) == 2 and (repo / "notes.txt").read_text() == "the experiment's notes\n"
    assert app.panels.actions.undo_button.layout.display is None
    assert app.panels.actions.cancel_button.layout.display == "none"

    app.panels.actions.undo_button.click()
    asked = confirm_text(app)
    assert "Undo the Apply of withnotes" in asked
    assert "params.yaml, stage.py" in asked and "notes.txt" in asked
    assert "outputs/generated" in asked and "Changed since the Apply" not in asked
    click_confirm(app)
    assert "Undone" in app.panels.header.status.value, app.panels.header.status.value
    assert rank(repo) == 5 and (repo / "notes.txt").read_text() == "mine\n"
    assert (repo / "stage.py").read_text().endswith("# edited meanwhile\n")
    assert (repo / IMAGE).read_bytes() == b"my own picture"
    assert app.panels.actions.undo_button.layout.display == "none"


def test_an_experiment_named_like_the_branch_is_applied_not_the_branch(repo: Path):
    """`dvc exp apply main` would apply the branch main (rank 4); the page applies the
    experiment main (rank 16), by its ref."""
    edit_params(repo, 5)
    app = Dashboard(repo, watch=False)
    rows = app.state.frame[
        (app.state.frame["kind"] == "experiment") & (app.state.frame["name"] == "main")
    ]
    app.pick([rows["id"].iloc[0]])
    app.panels.actions.apply_button.click()
    assert "Edited files: params.yaml" in confirm_text(app)
    click_confirm(app)
    assert "Applied main" in app.panels.header.status.value, app.panels.header.status.value
    assert rank(repo) == 16
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["quick"]["params"]["params.yaml"]["train_lora"]["rank"] == 16


def test_undo_checks_again_at_confirm_what_changed_since_the_apply(repo: Path):
    edit_params(repo, 5)
    workspace.apply(repo, ref(repo, "eight"))
    plan = workspace.undo_plan(repo)
    assert plan.changed_since == [] and "params.yaml" in plan.write
    (repo / "dvc.lock").write_text((repo / "dvc.lock").read_text() + "# edited after\n")
    with pytest.raises(workspace.UndoChangedSinceAsked, match=r"dvc\.lock"):
        workspace.undo(repo, plan)
    assert rank(repo) == 8  # nothing undone
    again = workspace.undo_plan(repo)
    assert again.changed_since == ["dvc.lock"]
    workspace.undo(repo, again)
    assert rank(repo) == 5


# A dvc whose `exp apply` stops in its longest part, the checkout of the outputs (after the git
# files are written), until it is interrupted: the cancel then lands part-way, every time.
SLOW_DVC = """#!{python}
import pathlib, sys, time
import dvc.repo.checkout
def checkout(*args, **kwargs):
    pathlib.Path({ready!r}).touch()
    time.sleep(600)
dvc.repo.checkout.checkout = checkout
from dvc.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def slow_apply(tmp_path: Path, monkeypatch) -> Path:
    """dvc_cli runs a dvc whose apply waits in its output checkout; the file it touches there."""
    ready = tmp_path / "apply-is-checking-out"
    wrapper = tmp_path / "slow-dvc"
    wrapper.write_text(SLOW_DVC.format(python=sys.executable, ready=str(ready)))
    wrapper.chmod(0o755)
    monkeypatch.setattr(dvc_cli, "dvc_executable", lambda: str(wrapper))
    return ready


def wait_for_file(path: Path, process=None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process is None or process.poll() is None, "dvc ended before it reached the wait"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_cancelled_apply_is_never_killed_and_undo_brings_the_workspace_back(
    repo: Path, slow_apply: Path
):
    edit_params(repo, 5)
    (repo / "notes.txt").write_text("mine\n")
    before = state(repo)
    seen = []

    def cancel_part_way(process) -> None:
        seen.append(process)
        wait_for_file(slow_apply, process)
        interrupt(process)

    with pytest.raises(DvcError, match="Undo brings it back") as failure:
        workspace.apply(repo, ref(repo, "withnotes"), started=cancel_part_way)
    assert f"interrupted (exit {dvc_cli.INTERRUPTED})" in str(failure.value)  # never -9
    assert seen[0].returncode == dvc_cli.INTERRUPTED
    assert rank(repo) == 2, "the apply was cancelled after it wrote the experiment's files"
    assert workspace.has_undo(repo)
    workspace.undo(repo)
    assert state(repo) == before


def test_cancel_in_the_page_stops_the_apply_cleanly_and_undo_brings_the_workspace_back(
    repo: Path, slow_apply: Path
):
    edit_params(repo, 5)
    (repo / "notes.txt").write_text("mine\n")
    before = state(repo)
    app = Dashboard(repo, watch=False)
    actions_panel = app.panels.actions
    app.pick(["withnotes"])
    actions_panel.apply_button.click()
    actions_panel.confirm_yes.click()
    wait_for_file(slow_apply)
    process = app.picked_actions._process
    assert process is not None and process.poll() is None
    assert actions_panel.cancel_button.layout.display is None  # shown while dvc works
    # the click is answered while the apply runs (in the page, a click that waited for the
    # apply would hold the kernel, and Cancel would come after the apply it was to stop)
    click = threading.Thread(target=actions_panel.cancel_button.click, daemon=True)
    click.start()
    click.join(30)
    if click.is_alive():
        interrupt(process)
    assert not click.is_alive(), "the Cancel click waited for the apply"
    app.picked_actions.wait_for_work(120)
    assert process.returncode == dvc_cli.INTERRUPTED  # SIGINT, handled by dvc: never a kill
    status = app.panels.header.status.value
    assert "interrupted" in status and "Undo brings it back" in status, status
    assert actions_panel.cancel_button.layout.display == "none"
    assert actions_panel.undo_button.layout.display is None

    actions_panel.undo_button.click()
    click_confirm(app)
    assert "Undone" in app.panels.header.status.value, app.panels.header.status.value
    assert state(repo) == before


def test_apply_and_undo_wait_while_another_tab_changes_the_workspace(repo: Path):
    """Another tab's workspace run holds the workspace lock: Apply and Undo say so and change
    nothing; once it is released they work."""
    edit_params(repo, 5)
    app = Dashboard(repo, watch=False)
    other_tab = WorkspaceLock(repo, "run an experiment in the workspace")
    with other_tab:
        app.pick(["eight"])
        app.panels.actions.apply_button.click()
        click_confirm(app)
        said = app.panels.header.status.value
        assert "cannot apply eight now: run an experiment in the workspace" in said, said
        assert rank(repo) == 5 and not workspace.has_undo(repo)
    app.panels.actions.apply_button.click()
    click_confirm(app)
    assert rank(repo) == 8 and workspace.has_undo(repo)
    with other_tab:
        app.panels.actions.undo_button.click()
        click_confirm(app)
        said = app.panels.header.status.value
        assert "is changing the workspace" in said and "Undone" not in said, said
        assert rank(repo) == 8
    app.panels.actions.undo_button.click()
    click_confirm(app)
    assert rank(repo) == 5 and not workspace.has_undo(repo)


def test_only_the_newest_entries_are_kept_and_undo_refuses_after_a_commit(repo: Path, monkeypatch):
    monkeypatch.setattr(workspace, "KEEP", 2)
    for name in ("eight", "main", "withnotes"):
        workspace.apply(repo, ref(repo, name))
    assert [e.number for e in workspace.entries(repo)] == [2, 3]
    assert not (repo / workspace.UNDO_FILES / "1").exists()
    assert run(repo, "git", "for-each-ref", "refs/pokemon-lora/undo/1") == ""
    run(repo, "git", "commit", "-qam", "the applied experiment")
    with pytest.raises(DvcError, match="HEAD moved"):
        workspace.undo(repo)
