"""Benchmark: the prompt playground's generation worker on the shipped tiny model, against the
issue's goals (ready within 5 s of a cold start, 12 images within 3 s of the click, the first
images within 1 s).

    python -m bench.playground               # 3 cold starts, 3 warm draws of each kind
    python -m bench.playground --repeats 5

It builds a playground repository (bench.harness.playground_repo: the baseline and one
experiment, each with its own LoRA in DVC's cache) and drives real workers through
PlaygroundClient, as the dashboard's kernel does:

- cold start: a new worker process, from its start to its ready event (the client's view), and
  where that time goes (the worker's imports and model load, measured in a separate process);
- a first LoRA load: a one-step, one-image draw of a LoRA not loaded yet, less the same draw
  once it is loaded (the first one also imports dvc; the second LoRA does not);
- a LoRA switch: one-step draws alternating between two loaded LoRAs, less the same draws of
  one LoRA (the base model is never reloaded: the worker's pid stays), and the switch itself
  (Adapters.use) timed inside a worker's engine;
- the click: 4 seeds x (base + 2 LoRAs) = 12 images at 25 steps and 64 px, default batching,
  with a warm worker: to the first image and to the last.

Times are medians of --repeats runs, wall clock on this machine, from the client's side.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.playground_repo import add_playground_experiment, make_playground_repo
from dashboard.playground import BaseColumn, DrawRequest, LoraColumn, PlaygroundClient
from dashboard.playground.client import default_command
from dashboard.playground.rundir import run_dir

PROMPT = "a pkmnlora pokemon"
ONE = {"seeds": (0,), "num_inference_steps": 1}
GOALS = {"ready (cold worker)": 5.0, "12 images, last": 3.0, "12 images, first": 1.0}
# The worker's start, step by step, in a fresh interpreter (what `-X importtime` details).
STARTUP = """
import os, sys, time, json
from pathlib import Path
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
steps, t = {}, time.perf_counter()
def step(name):
    global t
    now = time.perf_counter(); steps[name] = now - t; t = now
import torch; step("import torch")
import diffusers, stages.models.diffusion; step("import diffusers + its pipeline (transformers)")
import dashboard.playground.engine as engine; step("import the rest (stages' generate, schema)")
loaded = engine.Engine(Path(sys.argv[1])); step("load the tiny pipeline")
from dashboard.playground.protocol import LoraColumn
columns = [LoraColumn(rev[:8], rev) for rev in sys.argv[2:]]
for column in columns:
    loaded.adapters.use(column)
start = time.perf_counter()
for _ in range(20):
    for column in columns:
        loaded.adapters.use(column)
switch = (time.perf_counter() - start) / (20 * len(columns))
print(json.dumps({"steps": steps, "switch": switch}))
"""


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed_draw(client: PlaygroundClient, request: DrawRequest) -> tuple[float, float]:
    """Seconds from the click to the first image and to the draw's end."""
    first: list[float] = []
    start = time.perf_counter()

    def on_event(event: dict) -> None:
        if event["type"] == "image" and not first:
            first.append(time.perf_counter() - start)

    draw = client.draw(request, on_event=on_event)
    outcome = draw.wait(600)
    if outcome != "finished":
        raise RuntimeError(f"the draw ended {outcome}: {draw.message} {draw.errors}")
    return first[0], time.perf_counter() - start


def cold_start(repo: Path, run: Path) -> tuple[float, float, PlaygroundClient]:
    """A new worker in its own run folder: seconds to ready (client) and the worker's own."""
    command = [*default_command(repo, run_dir(repo, run)), "--idle-exit", "60"]
    client = PlaygroundClient(repo, run_dir=run, worker_command=command)
    start = time.perf_counter()
    ready = client.connect()
    return time.perf_counter() - start, ready["seconds"], client


def startup_steps(repo: Path, revs: list[str]) -> tuple[dict[str, float], float]:
    """The worker's start step by step, and one LoRA switch (Adapters.use: enable_lora and
    set_adapters), timed inside a worker's engine."""
    result = subprocess.run(
        [sys.executable, "-c", STARTUP, str(repo), *revs],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return found["steps"], found["switch"]


def lora_costs(client: PlaygroundClient, revs: list[str]) -> dict[str, float]:
    """First and second LoRA load, and a switch between two loaded LoRAs."""
    first, second = revs
    one = lambda *columns: DrawRequest(PROMPT, **ONE, columns=columns)  # noqa: E731
    timed_draw(client, one(BaseColumn()))  # the scheduler and the first call warmed up
    _, load_first = timed_draw(client, one(LoraColumn("a", first)))
    loaded_first = median([timed_draw(client, one(LoraColumn("a", first)))[1] for _ in range(3)])
    _, load_second = timed_draw(client, one(LoraColumn("b", second)))
    same = [timed_draw(client, one(LoraColumn("b", second)))[1] for _ in range(6)]
    switching = [timed_draw(client, one(LoraColumn("x", rev)))[1] for rev in [first, second] * 3]
    if client.status()["pid"] != client.ready["pid"]:
        raise RuntimeError("the worker changed: the base model was loaded again")
    return {
        "first LoRA load (imports dvc)": load_first - loaded_first,
        "second LoRA load": load_second - median(same),
        "LoRA switch, seen by the client": median(switching) - median(same),
        "one-step one-image draw, loaded LoRA": median(same),
    }


def clicks(client: PlaygroundClient, revs: list[str], repeats: int) -> dict[str, float]:
    request = DrawRequest(
        PROMPT,
        seeds=(0, 1, 2, 3),
        num_inference_steps=25,
        columns=(BaseColumn(), LoraColumn("1e-3", revs[0]), LoraColumn("2e-3", revs[1])),
    )
    timed_draw(client, request)  # every LoRA loaded, every code path warm
    runs = [timed_draw(client, request) for _ in range(repeats)]
    base_only = DrawRequest(PROMPT, seeds=(0, 1, 2, 3), num_inference_steps=25)
    one_column = [timed_draw(client, base_only)[1] for _ in range(repeats)]
    return {
        "12 images, first": median([first for first, _ in runs]),
        "12 images, last": median([last for _, last in runs]),
        "4 images, one column (base)": median(one_column),
    }


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}, "
        f"load average {load:.2f} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(time.strftime("%Y-%m-%d"), machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-playground-") as folder:
        root = Path(folder)
        start = time.perf_counter()
        repo = make_playground_repo(root / "repo")
        baseline = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        revs = [
            baseline,
            add_playground_experiment(repo, "lr-2", "train_lora.learning_rate=0.002"),
        ]
        print(f"repository with 2 LoRAs in {time.perf_counter() - start:.1f} s", flush=True)
        results: dict[str, float] = {}
        readies, own = [], []
        for number in range(args.repeats):
            ready, seconds, client = cold_start(repo, root / f"run-{number}")
            readies.append(ready)
            own.append(seconds)
            if number < args.repeats - 1:
                client.stop_worker()
                client.close()
        results["ready (cold worker)"] = median(readies)
        results["  of which the worker's imports and load"] = median(own)
        steps, switch = startup_steps(repo, revs)
        results.update({f"  {name}": value for name, value in steps.items()})
        try:
            results.update(lora_costs(client, revs))
            results["LoRA switch, in the worker (enable_lora + set_adapters)"] = switch
            results.update(clicks(client, revs, args.repeats))
        finally:
            client.stop_worker()
            client.close()
    print()
    print("| measure | seconds | goal |")
    print("|---|---:|---|")
    for name, value in results.items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"{goal:.0f} s: {'met' if value <= goal else 'missed'}"
        print(f"| {name} | {value:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
