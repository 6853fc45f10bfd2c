"""Stage check_params: validate the whole params.yaml before any other stage runs.

    python -m stages.params                                   # check params.yaml by hand
    python -m stages.params --stamp outputs/params_checked.txt  # the stage, as dvc.yaml runs it

The schema it checks against is stages/common/params.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.common import paths
from stages.common.cli import run_stage
from stages.common.params import load_params

STAMP_TEXT = (
    "params.yaml passed python -m stages.params. Every stage of dvc.yaml depends on this file,\n"
    "so a bad value stops the pipeline at check_params, before any stage deletes its outputs.\n"
)


def main(argv: list[str] | None = None) -> None:
    """Validate every section of params.yaml; with --stamp (the check_params stage), write a
    file whose content never changes, which every other stage lists in its deps: DVC deletes a
    stage's outputs right before running it, so the whole file is checked first, and a good
    change re-runs only the stages that read it (the stamp's hash stays the same)."""
    parser = argparse.ArgumentParser(description="Validate params.yaml.")
    parser.add_argument("path", nargs="?", type=Path, default=paths.PARAMS)
    parser.add_argument("--stamp", type=Path, help="write this constant file when valid")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    load_params(path=args.path)
    if args.stamp:
        args.stamp.parent.mkdir(parents=True, exist_ok=True)
        args.stamp.write_text(STAMP_TEXT, encoding="utf-8")
    print(f"{args.path}: ok")


if __name__ == "__main__":
    run_stage(main)
