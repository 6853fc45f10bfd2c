"""A real Voila server and Debian's Chromium driven by Playwright, for the dashboard's browser
tests and benchmark. Never downloads a browser: `make test` installs Debian's chromium when it
is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from dashboard.serve import voila_command, voila_env

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def chromium_path() -> str:
    """Debian's chromium; an error saying how to get it when it is not installed."""
    for name in ("/usr/bin/chromium", shutil.which("chromium") or "",
                 shutil.which("chromium-browser") or ""):  # fmt: skip
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


@contextmanager
def voila_server(repo: Path, log: Path, pool_size: int = 1, timeout: float = 120):
    """Serve the dashboard of `repo` on a free port; yields its address."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            voila_command(port, pool_size=pool_size), env=voila_env(repo), stdout=output,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"voila exited ({process.returncode}):\n{log.read_text()[-3000:]}"
                    )
                try:
                    with urllib.request.urlopen(url + "voila/static/voila.js", timeout=2):
                        break
                except urllib.error.HTTPError:
                    break  # it answers
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"voila did not answer:\n{log.read_text()[-3000:]}"
                        ) from None
                    time.sleep(0.2)
            yield url
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
