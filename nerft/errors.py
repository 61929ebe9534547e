"""The one error type a user sees: a message of one line that says what to do, and an exit
code. Each stage subclasses it; the `nerft` command reports it in one place (`nerft.cli`), so
no command prints a traceback for a mistake the user can fix, and every other exception (a
bug) keeps its traceback."""

from __future__ import annotations


class NerftError(Exception):
    """A problem the user can fix; printed as one line. Exit code 2 unless a subclass says.

    Exit codes: 2 bad arguments, input or state; 1 the command ran but its result is not good
    enough (an export that fails its own check, a prepare that kept too little); 0 nothing to
    do (e.g. resuming a finished run): printed as a plain line on stdout, not as an error.
    """

    exit_code = 2


class UsageError(NerftError):
    """An option value the command cannot use; the message names the option."""
