"""Serve the dashboard with Voila: `python -m dashboard.serve` (what `make dashboard` runs).

The page launches, applies and removes experiments, so it is guarded as Jupyter guards a notebook
server. It asks for a token, a random one unless $DASHBOARD_TOKEN or --token gives one, printed in
the address (`http://127.0.0.1:8866/?token=...`) and given to Voila, which runs in this process,
never on a command line, which `ps` shows to every user. It listens on 127.0.0.1 and, on a loopback
address, refuses a request whose Host header names another site (a DNS-rebinding page); on a
wider one (--host 0.0.0.0, to open it from another machine) the token alone keeps others out, and
--no-token is refused. It runs at most --max-kernels kernels: a page asked for beyond that gets a
503 that says why. Kernels are preheated (the first page shows in about half the time) and culled
when idle, so that closed tabs leave no kernel behind. The prompt playground's generation worker
(dashboard.playground.worker) starts with the server, so that it is ready when the page opens,
and stops with it; it listens on a Unix socket in a folder only this user can enter."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import secrets
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Integer
from traitlets.config import Config

from dashboard.dvc_cli import dvc_env
from dashboard.playground.client import ensure_worker, stop_worker
from dashboard.playground.commands import has_base_model

NOTEBOOK = Path(__file__).with_name("dashboard.ipynb")
TOKEN_ENV = "DASHBOARD_TOKEN"  # what `make dashboard TOKEN=...` sets, read by main()
LOCAL_HOSTNAMES = ["localhost"]  # the names besides loopback IPs that the Host check lets in
WILDCARD = {"", "0.0.0.0", "::"}


def is_loopback(host: str) -> bool:
    """Whether `host` is an address of this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host in LOCAL_HOSTNAMES


def new_token() -> str:
    """A random token, as jupyter_server makes one (24 random bytes in hex)."""
    return secrets.token_hex(24)


def address(host: str, port: int, token: str | None) -> str:
    """The address to open: `http://HOST:PORT/?token=TOKEN`, as `jupyter lab` prints it."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    query = f"?token={quote(token, safe='')}" if token else ""
    return f"http://{host}:{port}/{query}"


def without_token(env: dict[str, str]) -> dict[str, str]:
    """A kernel's environment without the token: Voila passes each kernel the address of its
    page ($QUERY_STRING, $VOILA_REQUEST_URL), and the kernel runs the notebook and dvc."""
    clean = dict(env)
    if "QUERY_STRING" in clean:
        clean["QUERY_STRING"] = drop_token(clean["QUERY_STRING"])
    if "VOILA_REQUEST_URL" in clean:
        url = urlsplit(clean["VOILA_REQUEST_URL"])
        clean["VOILA_REQUEST_URL"] = urlunsplit(url._replace(query=drop_token(url.query)))
    return clean


def drop_token(query: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"])


class CappedKernelManager(AsyncMappingKernelManager):
    """Voila's kernel manager with a ceiling on kernels, the preheated ones included.

    Every page starts a kernel (or takes a preheated one, and Voila starts the next), so without
    a ceiling a page reloaded in a loop, or opened many times by another site, fills the machine
    with kernels. Over the ceiling a page gets a 503 that says why and what to do; a preheated
    kernel waits for a free place instead, and is started once a kernel shuts down. Kernels get
    their page's address without its token."""

    max_kernels = Integer(8, config=True, help="the most kernels that run at once")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._starting: set[str] = set()  # the ids of kernels being started
        self._closing = False

    def _count(self) -> int:
        return len(self._starting.union(self.list_kernel_ids()))

    def _full(self) -> bool:
        return self._count() >= self.max_kernels

    def _refusal(self) -> web.HTTPError:
        """A 503 whose reason, the one line that Voila's error page shows, says what to do."""
        self.log.warning(
            "Refused a page: %d kernels run or start, the most (--max-kernels)", self._count()
        )
        return web.HTTPError(
            503,
            reason=(
                f"Too many kernels: the dashboard runs {self.max_kernels}, its most "
                "(python -m dashboard.serve --max-kernels). Close a dashboard tab, or wait until "
                f"idle ones are shut down ({self.cull_idle_timeout} s after their tab closed), "
                "then reload this page"
            ),
        )

    def _in_pool(self, task: asyncio.Task | None) -> bool:
        """Whether `task` is one of Voila's preheating tasks that no page has taken yet."""
        return any(task in pool for pool in getattr(self, "_pools", {}).values())

    async def start_kernel(self, *, kernel_id: str | None = None, **kwargs) -> str:
        if kernel_id is None or kernel_id not in self:
            preheating = self._in_pool(asyncio.current_task())
            while self._full():
                if self._closing:  # Voila's shutdown_all awaits the preheating tasks
                    raise RuntimeError("the dashboard is shutting down")
                # A page that took a preheating task (popped it from the pool) awaits it: refuse
                # then, as a page that starts its own kernel.
                if not preheating or not self._in_pool(asyncio.current_task()):
                    raise self._refusal()
                await asyncio.sleep(0.5)
        if kwargs.get("env"):
            kwargs["env"] = without_token(kwargs["env"])
        kernel_id = kernel_id or str(uuid.uuid4())  # counted from now on
        self._starting.add(kernel_id)
        try:
            return await super().start_kernel(kernel_id=kernel_id, **kwargs)
        finally:
            self._starting.discard(kernel_id)

    async def shutdown_kernel(self, kernel_id: str, now: bool = False, restart: bool = False):
        result = await super().shutdown_kernel(kernel_id, now=now, restart=restart)
        # A page refused while the preheated kernel waited emptied the pool: fill it again.
        if not restart and not self._closing and hasattr(self, "fill_if_needed"):
            for notebook in list(self._pools):
                self.fill_if_needed(notebook_name=notebook)
        return result

    async def shutdown_all(self, now: bool = False) -> None:
        self._closing = True
        await super().shutdown_all(now=now)


def voila_config(
    port: int,
    host: str = "127.0.0.1",
    token: str | None = None,
    pool_size: int = 1,
    cull_seconds: int = 600,
    max_kernels: int = 8,
) -> Config:
    """Voila's configuration: given to it in this process, so that no command line holds the
    token (ps shows command lines to every user of the machine)."""
    config = Config()
    config.Voila.update(ip=host, port=port, port_retries=0, open_browser=False)
    # --no-token: an empty token, Voila's own default (whoever reaches the port is let in)
    config.Voila.token = token or ""
    if is_loopback(host):
        # Voila sets allow_remote_access, which turns jupyter_server's Host check off; its
        # tornado_settings are applied after, so the check is on again.
        config.Voila.tornado_settings = {
            "allow_remote_access": False,
            "local_hostnames": LOCAL_HOSTNAMES,
        }
    config.VoilaConfiguration.update(
        strip_sources=True,
        show_tracebacks=False,
        preheat_kernel=pool_size > 0,
        default_pool_size=pool_size,
        multi_kernel_manager_class=CappedKernelManager,
    )
    config.CappedKernelManager.max_kernels = max_kernels
    config.MappingKernelManager.cull_idle_timeout = cull_seconds
    config.MappingKernelManager.cull_interval = min(60, max(1, cull_seconds // 2))
    return config


def voila_env(repo: Path) -> dict[str, str]:
    """The environment of Voila and so of its kernels: $DASHBOARD_REPO says which repository
    the page shows; never the token."""
    env = dvc_env()
    env.pop(TOKEN_ENV, None)
    env["DASHBOARD_REPO"] = str(Path(repo).resolve())
    return env


def serve(repo: Path, config: Config, playground: bool = True) -> None:
    """Run Voila on the dashboard notebook in this process until it is stopped (Ctrl-C). With
    `playground`, the prompt playground's generation worker starts now, in the background, so
    that it has loaded the base model when the page opens; it stops with the server."""
    from voila.app import Voila  # jupyter_server, nbconvert: only when serving

    env = voila_env(repo)
    os.environ.clear()
    os.environ.update(env)
    # with the token-free environment; not before the pipeline has set up a base model
    worker = ensure_worker(repo) if playground and has_base_model(repo) else None
    try:
        Voila.launch_instance(argv=[str(NOTEBOOK)], config=config)
    finally:
        if worker is not None:
            stop_worker(repo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument(
        "--token",
        help=f"the token the address asks for (default: ${TOKEN_ENV}, else a random one); "
        "prefer the variable: ps shows command lines",
    )
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="ask for no token (loopback only): anything on this machine can drive the page",
    )
    parser.add_argument(
        "--no-playground",
        action="store_true",
        help="do not start the prompt playground's generation worker with the server (the "
        "page starts it at its first Draw)",
    )
    parser.add_argument("--pool-size", type=int, default=1, help="preheated kernels")
    parser.add_argument(
        "--max-kernels",
        type=int,
        default=8,
        help="the most kernels at once (one per open page, and the preheated ones)",
    )
    parser.add_argument(
        "--cull-seconds",
        type=int,
        default=600,
        help="shut a kernel down once its page has been closed this long",
    )
    args = parser.parse_args(argv)
    if args.no_token:
        if args.token:
            parser.error("give --token or --no-token, not both")
        if not is_loopback(args.host):
            parser.error(
                f"--no-token with --host {args.host} would let anyone who reaches this "
                "machine run code through the dashboard: keep the token"
            )
        token = None
    elif args.token == "":
        parser.error("--token is empty: give one, or --no-token to serve without one")
    else:
        token = args.token or os.environ.get(TOKEN_ENV) or new_token()
    if args.max_kernels < max(1, args.pool_size + 1):
        parser.error("--max-kernels must leave room for a page beside the preheated kernels")
    repo = Path(args.repo).resolve()
    if not (repo / ".dvc").is_dir():
        print(f"warning: {repo} is not a DVC repository; the page will say so", file=sys.stderr)
    local = "127.0.0.1" if args.host in WILDCARD else args.host
    print(f"Dashboard of {repo}: {address(local, args.port, token)}  (Ctrl-C stops it)")
    if args.host in WILDCARD:
        print(f"  from another machine: {address(socket.gethostname(), args.port, token)}")
    sys.stdout.flush()
    serve(
        repo,
        voila_config(
            args.port, args.host, token, args.pool_size, args.cull_seconds, args.max_kernels
        ),
        playground=not args.no_playground,
    )


if __name__ == "__main__":
    main()
