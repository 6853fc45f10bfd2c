"""dvclive as the stages use it: it writes metrics and plots files, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dvclive import Live


def open_live(folder: Path) -> Live:
    """A dvclive logger that writes into `folder` only. DVC runs the stages and dvc.yaml
    declares their plots, so dvclive must not write a dvc.yaml or save experiments itself."""
    return Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report=None)


def close_live(live: Live, summary: dict[str, Any]) -> None:
    """Add the final figures to the logger's metrics.json and close it."""
    for key, value in summary.items():
        live.summary[key] = value
    live.make_summary()
    live.end()
