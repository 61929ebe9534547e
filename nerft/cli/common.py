"""What every command shares: the error console and the one way a user mistake is printed."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape

from nerft.errors import NerftError

err = Console(stderr=True)


def print_error(message: str) -> None:
    """One `error:` line on stderr (file names and data printed literally, never as markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """End the command for a bad argument the command itself spotted: one line, exit 2."""
    print_error(message)
    raise typer.Exit(2)


def report(error: NerftError) -> int:
    """Print `error` as the user sees it and return its exit code. Under torchrun or
    accelerate every rank raises the same error; rank 0 alone prints it."""
    if os.environ.get("RANK", "0") == "0":
        if error.exit_code == 0:  # nothing to do: a notice, not an error
            Console().print(str(error), highlight=False, soft_wrap=True)
        else:
            print_error(str(error))
    return error.exit_code
