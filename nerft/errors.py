"""The one error type a user sees: a message of one line that says what to do, and an exit
code. Each stage subclasses it; `nerft.cli.main` catches it once, so no command prints a
traceback for a mistake the user can fix."""

from __future__ import annotations


class NerftError(Exception):
    """A problem the user can fix; printed as one line. Exit code 2 unless a subclass says."""

    exit_code = 2
