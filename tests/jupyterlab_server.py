"""A real JupyterLab server for the dashboard's JupyterLab test: the venv's `jupyter-lab` on a
free port of 127.0.0.1, its token in $JUPYTER_TOKEN (never on the command line), a kernel spec
of this Python as the default kernel, and everything that would ask a question or reach the
internet turned off (news, update checks, the PyPI extension manager)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness.browser import Served, free_port

KERNEL_NAME = "pokemon-lora"
KERNEL_DISPLAY_NAME = "Python (pokemon-lora venv)"
# User settings of the lab, written before it starts: no "receive Jupyter news?" toast, no
# update check, and the preferred kernel started without the kernel-choice dialog.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
}


def write_kernel_spec(data_dir: Path) -> Path:
    """A kernel spec that runs this Python (the venv's, so that the kernel imports this
    checkout's `dashboard`), under $JUPYTER_DATA_DIR/kernels."""
    folder = data_dir / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


def write_lab_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def status_ok(base: str, token: str) -> bool:
    """Whether the server answers its REST API with this token (200 on /api/status)."""
    request = urllib.request.Request(
        base + "api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


@contextmanager
def jupyterlab_server(root: Path, log: Path, timeout: float = 120) -> Iterator[Served]:
    """`jupyter lab` serving `root` on 127.0.0.1: yields its address with the token (`url`,
    the lab's start page), the token and the base address. Its Jupyter folders (config, data,
    runtime, lab settings and workspaces) are fresh ones beside `log`, so nothing of the
    user's own Jupyter set-up takes part; terminated at the end, kernels with it."""
    home = log.parent / "jupyter"
    dirs = {
        name: home / name
        for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")
    }
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    write_kernel_spec(dirs["data"])
    write_lab_settings(dirs["settings"])
    port = free_port()
    token = secrets.token_hex(16)
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    command = [
        str(bin_dir / "jupyter-lab"),
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
        f"--LabApp.user_settings_dir={dirs['settings']}",
        f"--LabApp.workspaces_dir={dirs['workspaces']}",
        # offline: no news feed, no update check, no PyPI listing in the extension manager
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:  # containers and CI often run as root, which jupyter refuses unasked
        command.append("--allow-root")
    env = {
        **os.environ,
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the kernel runs dvc
        "PYTHONUNBUFFERED": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    base = f"http://127.0.0.1:{port}/"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while not status_ok(base, token):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"jupyter lab exited ({process.returncode}):\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"jupyter lab did not answer in {timeout:.0f} s:\n"
                        f"{log.read_text()[-3000:]}"
                    )
                time.sleep(0.3)
            yield Served(f"{base}lab?token={token}", token, base, port, process.pid, log)
        finally:
            process.terminate()  # jupyter_server shuts its kernels down on SIGTERM
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
