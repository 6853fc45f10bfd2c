"""Stage report, second half: make the notebook that papermill executed reproducible, then
export it to HTML that opens offline.

papermill and nbclient write wall-clock times into the executed notebook (when it started and
ended, per cell and in all), and papermill gives the cell it injects a random id; they would give
report.ipynb a new md5 on every run, so the times are removed and the cell gets a fixed id.
Everything else papermill records (its parameters, the input path) stays.

    python -m stages.report outputs/report/report.ipynb
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.fsutil import atomic_write_text

log = logging.getLogger(__name__)

TIMING_KEYS = ("start_time", "end_time", "duration")
INJECTED = "injected-parameters"  # papermill's tag of the cell it adds


def without_timing(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with papermill's and nbclient's time stamps taken out and a fixed id for
    the injected parameters (in place)."""
    for metadata in [notebook.metadata, *(cell.metadata for cell in notebook.cells)]:
        for key in TIMING_KEYS:
            metadata.get("papermill", {}).pop(key, None)
        metadata.pop("execution", None)
    for cell in notebook.cells:
        if INJECTED in cell.metadata.get("tags", []):
            cell.id = INJECTED
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path, help="the notebook papermill executed")
    args = parser.parse_args()
    if not args.notebook.is_file():
        raise StageError(f"{args.notebook} not found; papermill did not write it")
    notebook = without_timing(nbformat.read(args.notebook, as_version=4))
    atomic_write_text(args.notebook, nbformat.writes(notebook) + "\n")
    html, _ = HTMLExporter(exclude_input=True).from_notebook_node(notebook)
    target = args.notebook.with_suffix(".html")
    atomic_write_text(target, html)
    log.info("report in %s", target)


if __name__ == "__main__":
    run_stage(main)
