"""What every command shares: the error console and the one way a user mistake ends a command."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def fail(message: str) -> None:
    """Print a user mistake as one line (file names and data printed literally) and exit 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)
