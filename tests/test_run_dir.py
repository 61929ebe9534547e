"""`RunDir`: the one reader and writer of a run folder (issue 27), and the run-folder items of
issue 28 that need no training: line breaks in metrics lines (9), a reader during the
trainer's best/ swap (14), a lock that imports everywhere."""

import json
import subprocess
import sys
import threading

import pytest
from filelock import FileLock

from nerft.runs.run_dir import RunDir, RunDirError

LINE_BREAKS = "\u2028\u2029\u0085"  # valid raw inside a JSON string; str.splitlines splits on them


def a_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model: {source: demo}\n", encoding="utf-8")
    (folder / "run.json").write_text('{"labels": ["人名"]}', encoding="utf-8")
    return RunDir(folder)


def test_trim_keeps_lines_with_unicode_line_breaks_and_drops_a_torn_last_line(tmp_path):
    run = a_run(tmp_path / "run")
    text = f"张三{LINE_BREAKS}在北京。"
    for step in (2, 4):
        run.append_metric({"step": step, "loss": 1.0 / step})
        run.append_val_prediction({"step": step, "text": text, "answer": "[]"})
    # Lines an older nerft wrote raw, then a kill in the middle of writing one.
    with open(run.val_predictions, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 2, "text": text}, ensure_ascii=False) + "\n")
    with open(run.metrics, "a", encoding="utf-8") as f:
        f.write('{"step": 6, "lo')

    assert run.last_logged_step() == 4  # the torn line is not a step
    run.trim_metrics(2)
    lines = run.metrics.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and [json.loads(x)["step"] for x in lines[:-1]] == [2]
    kept = [json.loads(x) for x in run.val_predictions.read_text(encoding="utf-8").split("\n") if x]
    assert [r["step"] for r in kept] == [2, 2] and all(r["text"] == text for r in kept)
    # What nerft writes splits the same on "\n" and on every Unicode line break.
    assert run.val_predictions.read_text(encoding="utf-8").splitlines() == lines_of(run.val_predictions)


def lines_of(path):
    return [x for x in path.read_text(encoding="utf-8").split("\n") if x]


def test_a_reader_leaves_the_trainers_best_swap_alone(tmp_path):
    run = a_run(tmp_path / "run")
    run.best_old.mkdir()  # the trainer has renamed best/ away and is about to rename .best.tmp
    (run.best_old / "scores.json").write_text('{"step": 10}')
    run.best_staging.mkdir()
    (run.best_staging / "scores.json").write_text('{"step": 20}')
    trainer_failed = []

    def trainer_finishes_the_swap():
        try:
            run.best_staging.rename(run.best)
        except OSError as e:
            trainer_failed.append(e)

    with FileLock(str(run.lock), timeout=0):  # held by the training process
        finish = threading.Timer(0.2, trainer_finishes_the_swap)
        finish.start()
        found = RunDir(run.path).weights()  # `nerft serve RUN` started at that moment
        finish.join()
    assert not trainer_failed, trainer_failed
    assert found == run.best and json.loads((found / "scores.json").read_text())["step"] == 20


def test_with_no_trainer_a_reader_finishes_an_interrupted_swap(tmp_path):
    run = a_run(tmp_path / "run")
    run.best_old.mkdir()
    (run.best_old / "scores.json").write_text('{"step": 10}')
    run.best_staging.mkdir()  # never finished: no scores.json
    assert run.weights() == run.best
    assert json.loads((run.best / "scores.json").read_text())["step"] == 10
    assert not run.best_old.exists()


def test_a_second_writer_is_refused_by_name(tmp_path):
    run = a_run(tmp_path / "run")
    with run.writing():
        with pytest.raises(RunDirError, match="another `nerft train` \\(pid "):
            with RunDir(run.path).writing(wait_s=0):
                pass
    with RunDir(run.path).writing(wait_s=0):  # released
        pass


def test_the_run_lock_imports_without_fcntl():
    # Windows has no fcntl: the run folder and resume modules must import there.
    code = ("import sys; sys.modules['fcntl'] = None; "
            "import nerft.runs.run_dir, nerft.train.resume; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_outputs_name_everything_train_and_eval_write_and_nothing_else(tmp_path):
    run = a_run(tmp_path / "run")
    written = ["metrics.jsonl", "summary.json", ".final.tmp", ".final.old", "checkpoint-4",
               "damaged-checkpoint-2", "eval-test", "best", "final"]
    for name in written:
        (run.path / name).mkdir()
    (run.path / "notes.txt").write_text("mine")
    assert sorted(p.name for p in run.outputs()) == sorted(written + ["config.yaml", "run.json"])
    run.clear(keep=(run.path / "damaged-checkpoint-2",))
    assert sorted(p.name for p in run.path.iterdir()) == ["damaged-checkpoint-2", "notes.txt"]


def test_checkpoint_step_is_parsed_in_one_place(tmp_path):
    run = a_run(tmp_path / "run")
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-x", "damaged-checkpoint-12"):
        (run.path / name).mkdir()
    assert [p.name for p in run.checkpoints()] == ["checkpoint-10", "checkpoint-2"]
    assert RunDir.checkpoint_step(run.path / "checkpoint-10") == 10
    assert RunDir.checkpoint_step("checkpoint-x") is None
    aside = run.set_aside(run.path / "checkpoint-10")
    assert aside.name == "damaged-checkpoint-10"
    (run.path / "checkpoint-10").mkdir()
    assert run.set_aside(run.path / "checkpoint-10").name == "damaged-checkpoint-10.2"  # none replaced
    run.rotate_checkpoints(keep=1)
    assert [p.name for p in run.checkpoints()] == ["checkpoint-2"]


def test_the_runs_task_and_a_config_that_is_not_utf8(tmp_path):
    run = a_run(tmp_path / "run")
    task = run.task()
    assert task.labels == ("人名",) and task.answer_format == "json"
    run.config_yaml.write_bytes("data: {answer_format: compact}\n".encode("utf-16"))
    # Issue 28 item 12: one line naming the file, not a UnicodeDecodeError traceback.
    with pytest.raises(RunDirError, match="config.yaml: cannot read"):
        run.task()
