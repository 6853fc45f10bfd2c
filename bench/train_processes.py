"""Benchmark: the train_lora stage in one process against the same training in N processes on
accelerate's launcher (gloo on the CPU), as `dvc repro` runs it, and how far apart their loss
curves are.

    python -m bench.train_processes                  # 1 against 2 processes, 200 steps
    python -m bench.train_processes --processes 4 --steps 600

Builds the tiny pipeline's inputs in a scratch folder (the test settings: 60 creatures, 32 px),
then times `python -m stages.train_lora` end to end (start-up and writing included) and reads
the stage's own training time from outputs/train_lora/timing.json. On a CPU the processes share
its cores: several processes are for GPUs, and the figure here is the launcher's cost. Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.conftest import STAGES, TINY, Workdir
from tests.test_train_processes import curve


def timed_run(work: Workdir, processes: int, steps: int, batch: int) -> dict:
    settings = {
        **TINY["train_lora"],
        "max_steps": steps,
        "batch_size": batch,
        "checkpoint_every": 0,
        "validation_every": 0,
        "num_processes": processes,
    }
    work.write_params(**{**TINY, "train_lora": settings})
    start = time.perf_counter()
    work.run("train_lora")
    wall = time.perf_counter() - start
    timing = json.loads((work.path / "outputs/train_lora/timing.json").read_text())
    return {
        "processes": processes,
        "wall": wall,
        "training": timing["seconds"],
        "curve": [loss for _, loss in curve(work.path)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Workdir(Path(folder) / "work", Path(folder) / "cache")
        work.path.mkdir()
        work.write_params(**TINY)
        for stage in STAGES[: STAGES.index("train_lora")]:
            work.run(stage)
        print(f"train_lora, tiny model, {args.steps} steps of a batch of {args.batch}, CPU")
        print(f"{'processes':>9} {'wall s':>8} {'training s':>11} {'steps/s':>8}", flush=True)
        runs = []
        for _ in range(args.repeats):
            for processes in (1, args.processes):
                run = timed_run(work, processes, args.steps, args.batch)
                rate = args.steps / run["training"]
                print(
                    f"{processes:>9} {run['wall']:>8.1f} {run['training']:>11.1f} {rate:>8.1f}",
                    flush=True,
                )
                runs.append(run)
    one = next(r["curve"] for r in runs if r["processes"] == 1)
    many = next(r["curve"] for r in runs if r["processes"] == args.processes)
    gap = max(abs(a - b) for a, b in zip(one, many, strict=True))
    print(f"largest gap between the 1- and {args.processes}-process loss curves: {gap:.3g}")


if __name__ == "__main__":
    main()
