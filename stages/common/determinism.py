"""Pin what would make a torch stage's outputs depend on the machine rather than on data, code
and params alone.

torch's CPU kernels split matrix products and convolutions by thread, and the order of a float
sum changes its last bits: the same training on 1, 2 and 4 threads gives three different models
(measured: three md5s of the weights). Every torch stage therefore runs on THREADS threads,
whatever the machine has, and asks for deterministic kernels where torch has a choice (on a
GPU, cuBLAS needs its workspace fixed for that).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path

import torch

THREADS = 2  # torch threads in every stage: the committed dvc.lock was made with this many


def deterministic_torch(threads: int = THREADS) -> None:
    """Fixed thread counts and deterministic algorithms; call at the start of a stage."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        # can be set once per process only, before any parallel work: later calls keep it
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def cpu_description() -> dict[str, str]:
    """The CPU as far as float results go: its model name and the instruction set that torch's
    kernels dispatch to (AVX512, AVX2, ...). Two machines that agree on both compute the same
    bits; others may differ in the last bits of float results."""
    name = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"model": name, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def lock_machine() -> dict[str, object]:
    """What the committed dvc.lock's float results depend on besides data, code and params."""
    return {**cpu_description(), "torch": torch.__version__, "threads": THREADS}


if __name__ == "__main__":
    # `make lock` writes this beside the outputs it made: outputs/lock_machine.json
    print(json.dumps(lock_machine(), indent=2))
