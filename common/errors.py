"""The one way a user's mistake fails: a UserError, whose message names the file, row or key and the fix.

The CLI (flows/cli.py) catches this base class alone, prints the message as one line and exits with
USER_ERROR_EXIT. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake a user can make (a missing or malformed file, a bad setting, a stage run out of order)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file the user named, or a stage's input not made yet; the message names the file and the step."""


def one_line(exc: BaseException) -> str:
    """The error as one line: a message listing several problems on several lines is joined with ' | '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines) or type(exc).__name__


class ParamsError(UserError, ValueError):
    """A setting is malformed or impossible: the message names the key, the value and what is allowed."""
