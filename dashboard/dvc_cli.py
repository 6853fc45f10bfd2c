"""Run dvc for the dashboard: an argument list (never a shell string), a time-out, and errors a
person can read in the page instead of a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DvcError(RuntimeError):
    """A dvc command failed or hung; the message says which, why and what to do."""


def error_text(error: Exception, where: str) -> str:
    """What the page says of an error: the message of one we expect (a dvc command that failed
    or hung, a bad filter or value), else its type too, and its traceback goes to the log."""
    if isinstance(error, (DvcError, ValueError)):
        return str(error)
    logging.getLogger("dashboard").error("%s failed", where, exc_info=error)
    return f"Unexpected {type(error).__name__}: {error}"


def dvc_executable() -> str:
    """The dvc beside this Python (the project's venv) first, then the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else shutil.which("dvc") or "dvc"


def dvc_env() -> dict[str, str]:
    """The environment for dvc: this Python's bin folder first on PATH, so that the queue's
    workers (which dvc starts as `dvc ...`) and the stages' `python` are the project's, also
    when the venv was never activated (JupyterLab started by its full path)."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def git(repo: Path, *args: str, timeout: float = 30.0) -> str:
    """stdout of `git <args>` in `repo` (a read: what git printed, even when it failed)."""
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    ).stdout


def git_refs(repo: Path, *prefixes: str, timeout: float = 30.0) -> dict[str, str]:
    """{ref: commit} of the git refs under `prefixes` (`git for-each-ref`, milliseconds at
    1,000 refs)."""
    listed = git(
        repo, "for-each-ref", "--format=%(refname) %(objectname)", *prefixes, timeout=timeout
    )
    return dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)


def git_write(
    repo: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> str:
    """stdout of `git <args>` in `repo`, for what changes something (refs, files, an index):
    DvcError with git's message when it fails; never killed part-way (no time-out). `env` is
    added to the environment (GIT_INDEX_FILE for a private index). File names pass through as
    they are (surrogate escapes for bytes that are not UTF-8)."""
    result = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        input=input,
        encoding="utf-8",
        errors="surrogateescape",
        env={**os.environ, **(env or {})},
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()
        raise DvcError(
            f"`git {' '.join(args[:2])}` failed: {said[-1] if said else result.returncode}"
        )
    return result.stdout


def run_dvc(
    args: list[str],
    repo: Path,
    timeout: float = 60.0,
    write: bool = False,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> str:
    """stdout of `dvc <args>` run in `repo`; DvcError when it fails or runs past `timeout` s.

    A `write` (a command that changes the workspace, the refs or a remote: apply, remove,
    push, pull, checkout) is never killed part-way: it runs to its end however long it takes;
    time-outs are for reads. It can be cancelled cleanly with `interrupt(process)` (SIGINT, which
    dvc handles as Ctrl-C: it stops and releases its locks); `started` gets the process for
    that. An interrupt of this Python (Ctrl-C, the kernel's Interrupt) is passed on to a write
    the same way, and the write is waited for; a read is stopped."""
    command = [dvc_executable(), *args]
    shown = "dvc " + " ".join(args)
    if not (Path(repo) / ".dvc").is_dir():
        raise DvcError(f"{repo} is not a DVC repository (no .dvc folder): run `dvc init` there")
    # Output goes to files, not pipes: `dvc queue start` leaves a worker running that keeps
    # inherited pipes open, and reading pipes would wait for the worker to end.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            # a write runs in its own session: a Ctrl-C meant for this Python reaches it only
            # as the one SIGINT passed on below, never as a second signal to its group
            process = subprocess.Popen(
                command,
                cwd=repo,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=dvc_env(),
                start_new_session=write,
            )
        except OSError as error:
            raise DvcError(f"cannot run `{shown}`: {error}") from None
        if started is not None:
            started(process)
        code = _wait(process, None if write else timeout, write, shown)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, code, out.read(), err.read())
    if result.returncode != 0:
        reason = error_reason(result.stderr)
        if result.returncode == INTERRUPTED:
            raise DvcError(f"`{shown}` was interrupted (exit {INTERRUPTED}) before it finished")
        raise DvcError(f"`{shown}` failed (exit {result.returncode}): {reason}")
    return result.stdout


def error_reason(stderr: str) -> str:
    """dvc's ERROR line (else the last line), with the lines it announces when it ends in ':'
    ("Checkout failed for following targets:" and the targets), at most five of them."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    at = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), len(lines) - 1)
    if at < 0:
        return ""
    reason = lines[at]
    if reason.endswith(":"):
        listed = [line for line in lines[at + 1 :] if not line.startswith(("ERROR", "WARNING"))]
        more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
        reason = f"{reason} {', '.join(listed[:5])}{more}".rstrip()
    return reason


INTERRUPTED = 252  # dvc's exit status after a KeyboardInterrupt (SIGINT)


def interrupt(process: subprocess.Popen) -> None:
    """Cancel a running dvc cleanly, as Ctrl-C does: SIGINT, never SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)


def _wait(process: subprocess.Popen, timeout: float | None, write: bool, shown: str) -> int:
    while True:
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:  # a read only: writes have no time-out
            process.kill()
            process.wait()
            raise DvcError(f"`{shown}` took longer than {timeout:g} s and was stopped") from None
        except KeyboardInterrupt:
            if not write:
                process.kill()
                process.wait()
                raise
            interrupt(process)  # then wait for it to stop where it is safe to


def run_dvc_json(args: list[str], repo: Path, timeout: float = 60.0) -> Any:
    """The parsed JSON that `dvc <args> --json` prints."""
    output = run_dvc([*args, "--json"], repo, timeout)
    try:
        return json.loads(output)
    except json.JSONDecodeError as error:
        raise DvcError(f"`dvc {' '.join(args)} --json` printed no JSON ({error})") from None
