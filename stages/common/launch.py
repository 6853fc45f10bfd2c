"""A stage that runs itself under accelerate's launcher when its params ask for several processes.

`dvc repro` runs `python -m stages.train_lora` whatever the params say; with
`train_lora.num_processes` above 1, or an accelerate config file in `train_lora.accelerate_config`,
that process starts `accelerate launch ... -m stages.train_lora` and waits for it: accelerate's
launcher (torchrun) starts one process per GPU (or per CPU slot, with gloo, where there is no
GPU) and the stage's code runs in each, data parallel. A process started by a launcher
(`accelerate launch` typed by the user too) never launches again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from stages.common.errors import StageError
from stages.common.params import TrainLoraParams

# What torchrun sets in every process it starts: a process with these runs the stage itself.
LAUNCHED = ("LOCAL_RANK", "WORLD_SIZE")
PR_SET_PDEATHSIG = 1  # prctl(2)


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun, `accelerate launch`, mpirun)."""
    return all(name in os.environ for name in LAUNCHED)


def local_processes() -> int:
    """How many processes of this run share this machine (1 outside a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def wanted(cfg: TrainLoraParams) -> bool:
    """Whether the params ask for the launcher and this process is not one that it started."""
    return (cfg.num_processes > 1 or cfg.accelerate_config is not None) and not launched()


def free_port() -> int:
    """A TCP port free on this machine now, for the launcher's rendezvous: two runs at once
    (two queue workers) would both take accelerate's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command(cfg: TrainLoraParams, module: str) -> list[str]:
    """`accelerate launch` of `python -m module` as the params say."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config is not None:
        config = Path(cfg.accelerate_config)
        if not config.is_file():
            raise StageError(
                f"train_lora.accelerate_config = {cfg.accelerate_config!r}: no such file "
                f"(from {Path.cwd()}); write one with `accelerate config --config_file "
                f"{cfg.accelerate_config}`, or set it to null to train on this machine with "
                "train_lora.num_processes processes"
            )
        launch += ["--config_file", str(config)]
        if cfg.num_processes > 1:  # the param wins over the file's count
            launch += ["--num_processes", str(cfg.num_processes)]
    else:
        # --multi_gpu picks torchrun's launcher; without a GPU the stage asks accelerate for
        # the CPU, and torch.distributed runs on gloo.
        launch += [
            "--multi_gpu",
            "--num_processes",
            str(cfg.num_processes),
            "--num_machines",
            "1",
            "--main_process_port",
            str(free_port()),
            "--dynamo_backend",
            "no",
        ]
    return [*launch, "--mixed_precision", cfg.mixed_precision, "--quiet", "-m", module]


def _end_with_parent() -> None:
    """In the launcher's process, before it starts: SIGTERM when this process dies, even by
    SIGKILL (Linux), so that its training processes stop after their step and save a
    checkpoint rather than run on unwatched."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def relaunch(cfg: TrainLoraParams, module: str) -> int:
    """Run the stage under the launcher and wait for it; its exit status.

    Ctrl-C reaches every process of the terminal's group (DVC ignores it while its stage runs):
    the launcher and each training process see it themselves, so it is not passed on again.
    A SIGTERM sent to this process alone (a queue being stopped) is passed to the launcher,
    which passes it to each training process; each stops after its step, the main one saving a
    checkpoint."""
    cmd = command(cfg, module)
    child = subprocess.Popen(cmd, preexec_fn=_end_with_parent)

    def terminate(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
