"""The exceptions a stage raises for a problem that the user can fix."""


class StageError(Exception):
    """A problem with the input or the environment, told in one line that says how to fix it."""


class ParamsError(StageError):
    """params.yaml is missing, unreadable or holds a bad value."""


class StageInterrupted(StageError):
    """The user stopped the stage (Ctrl-C, SIGTERM); the message says how to resume."""
