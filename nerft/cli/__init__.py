"""The `nerft` command: one Typer app, one module per verb, each a thin call into a stage.

Every verb is registered here, when the package is imported (the verb modules import their
stages lazily, inside the command, so `nerft --help` stays fast). A user mistake is a
`NerftError`: caught once, by the root command below, printed as one line, exit code from the
error. Commands never catch them; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from nerft.cli import compare, data, demo, eval, export, model, predict, runs, select, serve, train
from nerft.cli.common import print_error, report
from nerft.errors import NerftError


class NerftCommand(TyperGroup):
    """The root `nerft` command: the one place a NerftError ends a command. It sits here rather
    than around `app()` in `main()` so that tests invoking `app` see exactly what users see."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NerftError as e:
            raise typer.Exit(report(e)) from None


app = typer.Typer(
    cls=NerftCommand,
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

    problems = too_old()
    for line in problems:
        print_error(line)
    if problems:  # outside the root command, so exit here
        raise SystemExit(2)
    app()
