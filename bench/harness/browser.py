"""A real Voila server and Debian's Chromium driven by Playwright, for the dashboard's browser
tests and benchmark. Never downloads a browser: `make test` installs Debian's chromium when it
is missing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's chromium; an error saying how to get it when it is not installed."""
    for name in (
        "/usr/bin/chromium",
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
    ):
        if name and Path(name).exists():
            return name
    raise RuntimeError(
        "Chromium is not installed: `make test` installs it (apt-get install -y chromium), "
        "or run `sudo apt-get install -y chromium`"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A dashboard server: `url` is the address it printed (with its token), `base` the same
    without the token, `pid` its process (Voila runs in it)."""

    url: str
    token: str | None
    base: str
    port: int
    pid: int
    log: Path


def answers(url: str) -> bool:
    """Whether a server answers at `url` (any HTTP status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def printed_address(text: str) -> str | None:
    """The address in `python -m dashboard.serve`'s line `Dashboard of REPO: URL  (...)`."""
    found = re.search(r"^Dashboard of .*?: (http://\S+)", text, re.MULTILINE)
    return found.group(1) if found else None


@contextmanager
def voila_server(
    repo: Path,
    log: Path,
    pool_size: int = 1,
    timeout: float = 120,
    token: str | None = None,
    no_token: bool = False,
    host: str = "127.0.0.1",
    max_kernels: int | None = None,
    cull_seconds: int | None = None,
) -> Iterator[Served]:
    """Serve the dashboard of `repo` on a free port as `make dashboard` does (`python -m
    dashboard.serve`, a token given in $DASHBOARD_TOKEN, else the random one it prints)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "dashboard.serve",
        "--repo",
        str(repo),
        "--host",
        host,
        "--port",
        str(port),
        "--pool-size",
        str(pool_size),
    ]
    if no_token:
        command.append("--no-token")
    if max_kernels is not None:
        command += ["--max-kernels", str(max_kernels)]
    if cull_seconds is not None:
        command += ["--cull-seconds", str(cull_seconds)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DASHBOARD_TOKEN", None)
    if token:
        env["DASHBOARD_TOKEN"] = token
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout
            url = None
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"dashboard.serve exited ({process.returncode}):\n"
                        f"{log.read_text()[-3000:]}"
                    )
                url = url or printed_address(log.read_text())
                if url and answers(base + "voila/static/voila.js"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"voila did not answer:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            found = re.search(r"[?&]token=([^&]+)", url)
            printed_token = urllib.parse.unquote(found.group(1)) if found else None
            yield Served(url, printed_token, base, port, process.pid, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


# Records, in the page, when the first table row appears (ms since navigation): Playwright's
# own polling waits behind the page's busy main thread, so it would see the table late.
FIRST_ROW_SCRIPT = """
new MutationObserver((_, observer) => {
  if (document.querySelector('.xt-row')) {
    window.__firstRow = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""

if __name__ == "__main__":  # pragma: no cover - a manual check
    print(chromium_path(), sys.version)
