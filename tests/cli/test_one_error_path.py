"""One error path for every command: a NerftError ends the command with one line and its own
exit code, reported by the root command alone; anything else is a bug and keeps its traceback.

The commands run through the real `nerft` app (in process, as `tests/data` do) or through
`python -m nerft`; stages are monkeypatched only to raise what a stage would raise."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nerft.cli import app
from nerft.errors import NerftError


def nerft(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.fixture
def train_config(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (data / name).write_text("")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dir: {data}}}\nmodel: {{source: ./unused}}\n"
                   f"training: {{output_dir: {tmp_path / 'run'}}}\ntracking: {{swanlab: 'off'}}\n")
    return cfg


def test_every_stage_error_of_train_is_a_nerft_error():
    from nerft.train.continual import ContinueError
    from nerft.train.resume import AlreadyFinished

    assert issubclass(ContinueError, NerftError) and ContinueError.exit_code == 2
    assert issubclass(AlreadyFinished, NerftError) and AlreadyFinished.exit_code == 0


def test_train_reports_a_continue_error_in_one_line(train_config, monkeypatch):
    from nerft.train import workflow
    from nerft.train.continual import ContinueError

    def parent_is_not_a_run(*args, **kwargs):
        raise ContinueError("init_from: runs/x is not a `nerft train` run directory")

    monkeypatch.setattr(workflow, "train", parent_is_not_a_run)
    result = nerft("train", train_config)
    assert result.exit_code == 2
    assert one_error_line(result) == "error: init_from: runs/x is not a `nerft train` run directory"


def test_resuming_a_finished_run_is_a_notice_with_exit_code_0(train_config, monkeypatch):
    from nerft.train import workflow
    from nerft.train.resume import AlreadyFinished

    def finished(*args, **kwargs):
        raise AlreadyFinished("runs/x has already finished (final); nothing to resume")

    monkeypatch.setattr(workflow, "train", finished)
    result = nerft("train", train_config, "--resume")
    assert result.exit_code == 0
    assert result.stdout.strip() == "runs/x has already finished (final); nothing to resume"
    assert "error" not in result.stderr
    # Under torchrun every rank raises it; only rank 0 speaks.
    result = nerft("train", train_config, "--resume", env={"RANK": "1"})
    assert result.exit_code == 0 and result.output == ""


def test_a_bug_in_train_keeps_its_traceback(train_config, monkeypatch):
    from nerft.train import workflow

    def bug(*args, **kwargs):
        return {}["best_step"]

    monkeypatch.setattr(workflow, "train", bug)
    result = nerft("train", train_config)
    assert isinstance(result.exception, KeyError) and result.exit_code == 1
    assert "error:" not in result.stderr


def test_export_exit_code_comes_from_the_error_class(tmp_path, monkeypatch):
    from nerft.export import ExportCheckFailed, ExportError
    from nerft.export import workflow

    # A bad input: exit 2 (real: the folder is not a run).
    result = nerft("export", tmp_path / "nothing", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "not a `nerft train` run directory" in one_error_line(result)
    # The export itself is wrong: exit 1, whatever the message says.
    for error, code in ((ExportCheckFailed("answers differ from the run's on 2 of 4 sentences"), 1),
                        (ExportError("export check failed: looks like one, but is a bad input"), 2)):
        def fails(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(workflow, "export_run", fails)
        result = nerft("export", tmp_path / "run", "--out", tmp_path / "y")
        assert result.exit_code == code
        assert one_error_line(result) == f"error: {error}"


def test_data_prepare_mistakes_are_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = nerft("data", "prepare", missing, "--out", tmp_path / "o")
    assert result.exit_code == 2 and one_error_line(result) == f"error: {missing}: no such file"
    binary = tmp_path / "labels.json"
    binary.write_bytes(b"\xff\xfe\x00bad")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "text": "张三", "entities": []}\n', encoding="utf-8")
    result = nerft("data", "prepare", corpus, "--out", tmp_path / "o", "--label-map", binary)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"error: {binary}: cannot read the label map")
    result = nerft("data", "prepare", corpus, "--out", tmp_path / "o", "--split", "0.7,0.3")
    assert result.exit_code == 2 and "--split '0.7,0.3'" in one_error_line(result)


@pytest.mark.parametrize("bug", [ValueError("unpacking went wrong"), OSError("fd 3 closed twice")])
def test_a_bug_in_data_prepare_is_not_a_one_line_user_error(tmp_path, monkeypatch, bug):
    """Only NerftErrors become one line: a ValueError or OSError from a bug (not from the user's
    input, which the data stage turns into DataError) keeps its traceback."""
    from nerft.data import prepare

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(prepare, "prepare", broken)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "text": "张三", "entities": []}\n', encoding="utf-8")
    result = nerft("data", "prepare", corpus, "--out", tmp_path / "o")
    assert result.exception is bug and result.exit_code == 1
    assert "error:" not in result.stderr


BUGGY_MAIN = """
import sys
import nerft.data.prepare

def broken(*args, **kwargs):
    raise KeyError("label")

nerft.data.prepare.prepare = broken
from nerft.cli import main
sys.argv = ["nerft", *sys.argv[1:]]
main()
"""


def test_through_main_a_mistake_is_one_line_and_a_bug_a_traceback(tmp_path):
    """As users run it: `main()` prints a user's mistake as one line (exit 2), a bug with its
    traceback (exit 1)."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "text": "张三", "entities": []}\n', encoding="utf-8")
    mistake = subprocess.run([sys.executable, "-m", "nerft", "data", "prepare", corpus,
                              "--out", tmp_path / "o", "--split", "x"],
                             capture_output=True, text=True, timeout=120)
    assert mistake.returncode == 2
    assert mistake.stderr.strip() == \
        "error: --split 'x': expected three numbers like 0.7,0.15,0.15"
    bug = subprocess.run([sys.executable, "-c", BUGGY_MAIN, "data", "prepare", corpus,
                          "--out", tmp_path / "o"], capture_output=True, text=True, timeout=120)
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and bug.stderr.strip().endswith("KeyError: 'label'")
    assert "error:" not in bug.stderr
