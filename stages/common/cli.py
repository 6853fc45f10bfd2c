"""The thin `__main__` of every stage: logging, and user errors as one line instead of a trace."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

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
        end(130 if isinstance(error, StageInterrupted) else 2)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        end(130)
    end(0)


def multi_process() -> bool:
    """Whether this process is one of several of a run that a launcher started (WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def end(status: int) -> NoReturn:
    """Exit with `status`. A process of a multi-process run leaves at once once its files are
    closed and its output flushed: tearing down torch's gloo process group can deadlock (its
    destructor holds the GIL and waits for a worker thread that needs it; seen once in twenty
    two-process trainings)."""
    if multi_process():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
