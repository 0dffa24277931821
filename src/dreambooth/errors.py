"""User-facing errors: the CLI prints them as one line and exits 2, never with a traceback."""
from __future__ import annotations

import contextlib


class UserError(Exception):
    """Bad input from the user (a path, a flag value, a model we cannot use). The message names the
    file or flag and says what to do."""


def exception_line(exc: BaseException) -> str:
    """Any exception as one line: its type and the first line of its message ("ValueError: bad shape")."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the path and what went wrong ("/out: cannot write: read-only file system")."""
    path = exc.filename if exc.filename is not None else ""
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    reason = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
    operation = _OPERATIONS.get(type(exc).__name__, "cannot use it")
    return f"{path}{other}: {operation}: {reason}" if path else f"{operation}: {reason}"


_OPERATIONS = {
    "PermissionError": "not allowed to read or write it",
    "FileNotFoundError": "no such file or folder",
    "NotADirectoryError": "a file where a folder is needed",
    "IsADirectoryError": "a folder where a file is needed",
    "FileExistsError": "already exists",
}


@contextlib.contextmanager
def file_operation(what: str, flag: str = ""):
    """Within the block an OSError becomes one line naming the path and ``what`` was being done
    ("--output /ro/out: cannot create the output folder: Read-only file system")."""
    try:
        yield
    except OSError as exc:
        where = f"{flag} " if flag else ""
        path = exc.filename if exc.filename is not None else ""
        reason = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
        raise UserError(f"{where}{path}: cannot {what}: {reason}") from None
