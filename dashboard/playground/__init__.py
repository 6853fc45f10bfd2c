"""The prompt playground's generation: a person types a prompt and sees the base model and the
LoRAs of picked experiments draw it side by side, from the same initial noise per seed.

    protocol   the wire format (JSON lines) and the request: DrawRequest and its columns
    rundir     where a repository's worker lives: its socket, log, locks, last failure
    client     the page kernel's side: PlaygroundClient, Draw, ensure_worker, stop_worker
    worker     the generation worker (`python -m dashboard.playground.worker`): one process
               per repository, the only one that imports torch
    engine     the worker's torch side: the base model, the LoRA adapters, the drawing

Importing this package (or its client) imports only the standard library: the page's kernel
must never import torch, diffusers or dvc. DrawRequest.check imports the params schema.
"""

from dashboard.playground.client import (
    Draw,
    PlaygroundClient,
    WorkerError,
    ensure_worker,
    stop_worker,
)
from dashboard.playground.protocol import (
    WORKSPACE,
    BadRequest,
    BaseColumn,
    BlendColumn,
    BlendPart,
    DrawRequest,
    LoraColumn,
)

__all__ = [
    "WORKSPACE",
    "BadRequest",
    "BaseColumn",
    "BlendColumn",
    "BlendPart",
    "Draw",
    "DrawRequest",
    "LoraColumn",
    "PlaygroundClient",
    "WorkerError",
    "ensure_worker",
    "stop_worker",
]
