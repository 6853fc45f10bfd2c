"""Serve the dashboard with Voila: `python -m dashboard.serve` (what `make dashboard` runs).

Listens on 127.0.0.1 unless --host says otherwise; launching experiments runs code, so a wider
address asks for a --token. Kernels are preheated (the first page shows in about half the time)
and culled when idle, so that closed tabs leave no kernel behind."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dashboard.dvc_cli import dvc_env

NOTEBOOK = Path(__file__).with_name("dashboard.ipynb")
LOCAL = {"127.0.0.1", "localhost", "::1"}


def voila_command(port: int, host: str = "127.0.0.1", token: str = "", pool_size: int = 1,
                  cull_seconds: int = 600) -> list[str]:  # fmt: skip
    """The voila command line; run it with $DASHBOARD_REPO set and the venv's bin on PATH."""
    voila = Path(sys.executable).with_name("voila")
    return [
        str(voila) if voila.exists() else "voila", str(NOTEBOOK), "--no-browser",
        f"--Voila.ip={host}", f"--port={port}", f"--Voila.token={token}",
        "--strip_sources=True", "--show_tracebacks=False",
        f"--preheat_kernel={pool_size > 0}", f"--pool_size={pool_size}",
        f"--MappingKernelManager.cull_idle_timeout={cull_seconds}",
        "--MappingKernelManager.cull_interval=60",
    ]  # fmt: skip


def voila_env(repo: Path) -> dict[str, str]:
    env = dvc_env()
    env["DASHBOARD_REPO"] = str(Path(repo).resolve())
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--token", default="", help="ask for ?token=TOKEN in the address")
    parser.add_argument("--pool-size", type=int, default=1, help="preheated kernels")
    args = parser.parse_args(argv)
    if args.host not in LOCAL and not args.token:
        parser.error(f"--host {args.host} opens the dashboard beyond this machine: "
                     "give a --token too (the dashboard can run code)")  # fmt: skip
    repo = Path(args.repo).resolve()
    if not (repo / ".dvc").is_dir():
        print(f"warning: {repo} is not a DVC repository; the page will say so", file=sys.stderr)
    query = f"?token={args.token}" if args.token else ""
    print(f"Dashboard of {repo}: http://{args.host}:{args.port}/{query}  (Ctrl-C stops it)",
          flush=True)  # fmt: skip
    command = voila_command(args.port, args.host, args.token, args.pool_size)
    os.execvpe(command[0], command, voila_env(repo))


if __name__ == "__main__":
    main()
