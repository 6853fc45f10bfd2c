"""The one exception type a stage raises for a problem the user can fix."""


class StageError(Exception):
    """A problem with the input or the environment, told in one line that says how to fix it."""
