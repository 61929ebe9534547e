"""Fixtures over the hand-written corpora in corpus_fixtures.py, and the CLI as a user runs it."""

import pytest
from typer.testing import CliRunner

from corpus_fixtures import RESUME, WEIBO, conll_text


@pytest.fixture
def resume_file(tmp_path):
    path = tmp_path / "resume.char.bmes"
    path.write_text(conll_text(RESUME, "BMES"), encoding="utf-8")
    return path


@pytest.fixture
def weibo_file(tmp_path):
    path = tmp_path / "weibo.bio"
    path.write_text(conll_text(WEIBO, "BIO", "\t"), encoding="utf-8")
    return path


@pytest.fixture
def cli():
    """`nerft ...` in-process; the result has exit_code, stdout and stderr."""
    from nerft.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


