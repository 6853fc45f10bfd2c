"""The dashboard's dvc runner against real dvc in temporary repositories."""

from __future__ import annotations

import subprocess

import pytest

from dashboard.dvc_cli import DvcError, error_reason, error_text, run_dvc_json


def init_repo(path):
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys_dvc(), "init", "-q"], cwd=path, check=True, capture_output=True, text=True)
    return path


def sys_dvc():
    from dashboard.dvc_cli import dvc_executable

    return dvc_executable()


def test_exp_show_of_a_repository_without_commits(tmp_path):
    repo = init_repo(tmp_path / "repo")
    shown = run_dvc_json(["exp", "show"], repo)
    assert isinstance(shown, list)


def test_not_a_dvc_repository_is_a_clear_error(tmp_path):
    with pytest.raises(DvcError, match="is not a DVC repository"):
        run_dvc_json(["exp", "show"], tmp_path)


def test_a_failing_command_names_dvc_s_reason(tmp_path):
    repo = init_repo(tmp_path / "repo")
    with pytest.raises(DvcError, match=r"`dvc exp apply no-such-exp --json` failed \(exit"):
        run_dvc_json(["exp", "apply", "no-such-exp"], repo)


def test_a_hanging_command_is_stopped(tmp_path):
    repo = init_repo(tmp_path / "repo")
    with pytest.raises(DvcError, match=r"took longer than 0\.01 s"):
        run_dvc_json(["exp", "show"], repo, timeout=0.01)


def test_expected_errors_read_as_their_message_and_others_name_their_type(caplog):
    """A failed dvc command or a bad value is said as it is; anything else also names its type
    (the page never shows a traceback), and its traceback goes to the server's log."""
    with pytest.raises(DvcError) as failed:
        run_dvc_json(["exp", "show"], "/nonexistent/repo")
    assert error_text(failed.value, "reading") == str(failed.value)
    assert "reading failed" not in caplog.text
    with pytest.raises(KeyError) as failed:
        {}["rank"]
    assert error_text(failed.value, "picking") == "Unexpected KeyError: 'rank'"
    assert "picking failed" in caplog.text and "Traceback" in caplog.text


def test_an_error_that_announces_a_list_says_the_list():
    stderr = (
        "WARNING: some plots\nERROR: Checkout failed for following targets:\n"
        + "".join(f"outputs/{n}\n" for n in range(7))
        + "Is your cache up to date?\n"
    )
    assert error_reason(stderr) == (
        "ERROR: Checkout failed for following targets: outputs/0, outputs/1, outputs/2, "
        "outputs/3, outputs/4 and 3 more"
    )
    assert error_reason("ERROR: failed to reproduce 'x'\nmore\n") == (
        "ERROR: failed to reproduce 'x'"
    )
    assert error_reason("no error line\nthe last one\n") == "the last one"
    assert error_reason("") == ""
