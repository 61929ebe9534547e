"""The `nerft` command: one Typer app, one module per verb, each a thin call into a stage.

Every verb is registered here, when the package is imported (the verb modules import their
stages lazily, inside the command, so `nerft --help` stays fast). A user mistake is a
`NerftError`: caught once in `main()`, printed as one line, exit code from the error.
"""

from __future__ import annotations

import typer

from nerft.cli import compare, data, demo, eval, export, model, predict, runs, select, serve, train
from nerft.cli.common import err, fail
from nerft.errors import NerftError

app = typer.Typer(
    help="Fine-tune chat LLMs into Chinese named-entity recognisers: data → train → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train.train)
app.command("eval")(eval.eval_)
app.command("demo")(demo.demo)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("compare")(compare.compare)
app.command("runs")(runs.runs)
app.command("select")(select.select)
app.add_typer(model.app, name="model", help="Fetch and convert models (e.g. the offline demo model).")


def main() -> None:
    from nerft.versions import too_old

    for line in too_old():
        fail(line)
    try:
        app()
    except NerftError as e:  # anything a user can fix that a command did not catch itself
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(e.exit_code) from None
