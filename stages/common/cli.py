"""The thin `__main__` of every stage: logging, and user errors as one line instead of a trace."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from stages.common.errors import ParamsError, StageError, StageInterrupted


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a StageError exits with status 2 and its message on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except StageError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        if isinstance(error, ParamsError):
            print(
                "error: nothing was written. Fix params.yaml and run again (outputs of the last "
                "good run stay in the DVC cache: `dvc checkout` restores them).",
                file=sys.stderr,
            )
        sys.exit(130 if isinstance(error, StageInterrupted) else 2)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
