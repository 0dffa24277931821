"""User-facing errors: the CLI prints them as one line and exits 2, never with a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a flag value, a model we cannot use). The message names the
    file or flag and says what to do."""
