"""Issue 28, runs: an interruption never costs what a message says is kept. On a real tiny run:
validation texts with Unicode line breaks and a torn metrics line resume (item 9); a resume
with no usable checkpoint keeps damaged-checkpoint-N and best/, and the init_from it offers
works (item 10); --overwrite drops the old test score (item 11)."""

import io
import json
import shutil

import pytest
from rich.console import Console

from nerft.config import Config
from nerft.data.example import Example, Span, write_jsonl
from nerft.runs.run_dir import RunDir
from nerft.runs.listing import list_runs
from nerft.train.resume import RunStateError
from nerft.train.workflow import train

# Hand-written sentences; each validation text ends in U+2028, U+2029 and U+0085 (a user's
# data may hold them: valid raw in JSON, and str.splitlines splits on every one).
ROWS = [
    ("张三在北京工作。", [(0, 2, "人名"), (3, 5, "地点")]),
    ("李四去了上海。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("王五昨天回到广州。", [(0, 2, "人名"), (6, 8, "地点")]),
    ("赵六住在杭州西湖边。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("今天南京下雨了。", [(2, 4, "地点")]),
    ("周九从武汉出发。", [(0, 2, "人名"), (3, 5, "地点")]),
]
LINE_BREAKS = "\u2028\u2029\u0085"


def _data(folder):
    folder.mkdir(parents=True)
    rows = [Example(f"r:{i}", t, [Span(s, e, lb, t[s:e]) for s, e, lb in spans])
            for i, (t, spans) in enumerate(ROWS)]
    write_jsonl(folder / "train.jsonl", (ex.to_dict() for ex in rows))
    write_jsonl(folder / "val.jsonl", ({**ex.to_dict(), "text": ex.text + LINE_BREAKS} for ex in rows[:2]))
    (folder / "stats.json").write_text(json.dumps({"labels": ["人名", "地点"]}, ensure_ascii=False))
    return folder


def _config(data, model, out, steps=4, **training):
    return Config.model_validate({
        "data": {"dir": str(data)}, "model": {"source": str(model)},
        "method": {"kind": "lora", "lora_r": 4},
        "training": {"output_dir": str(out), "max_steps": steps, "batch_size": 2, "grad_accum": 1,
                     "lr": 1e-3, "save_steps": 2, "save_total_limit": 3, "num_threads": 1, **training},
        "eval": {"eval_steps": 2, "val_size": 2, "batch_size": 2, "at_start": False},
        "tracking": {"swanlab": "off"}})


def _steps(run, key):
    return [json.loads(x)["step"] for x in run.metrics.read_text(encoding="utf-8").split("\n")
            if x and key in json.loads(x)]


def _console():
    return Console(file=io.StringIO(), width=400)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("reliability") / "data")


def test_interruptions_resume_and_keep_what_the_messages_say(tmp_path, data, tiny_model_dir):
    run = RunDir(tmp_path / "run")
    config = _config(data, tiny_model_dir, run.path)
    train(config, console=_console())
    texts = {json.loads(x)["text"] for x in run.val_predictions.read_text(encoding="utf-8").split("\n") if x}
    assert texts == {t + LINE_BREAKS for t, _ in ROWS[:2]}

    # Item 9: killed while writing step 4's metrics line, before checkpoint-4 was complete;
    # val_predictions.jsonl as an older nerft wrote it (line breaks raw).
    run.summary.unlink()
    shutil.rmtree(run.final)
    shutil.rmtree(run.path / "checkpoint-4")
    with open(run.val_predictions, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 4, "text": "王五" + LINE_BREAKS}, ensure_ascii=False) + "\n")
    with open(run.metrics, "a", encoding="utf-8") as f:
        f.write('{"step": 4, "loss": 0.5, "learning_ra')
    summary = train(config, resume=True, console=_console())
    assert summary.steps == 4 and _steps(run, "loss") == [1, 2, 3, 4] and _steps(run, "eval_f1") == [2, 4]
    texts = [json.loads(x)["text"] for x in run.val_predictions.read_text(encoding="utf-8").split("\n") if x]
    assert "王五" + LINE_BREAKS not in texts and set(texts) == {t + LINE_BREAKS for t, _ in ROWS[:2]}

    # Item 10: killed again, and every checkpoint's optimizer.pt damaged; the weights are whole.
    run.summary.unlink()
    shutil.rmtree(run.final)
    for folder in run.checkpoints():
        (folder / "optimizer.pt").write_bytes(b"torn")
    best_before = run.best_scores()
    out = _console()
    with pytest.raises(RunStateError) as refused:
        train(config, resume=True, console=out)
    message = str(refused.value)
    assert "init_from=" in message and "nothing was removed" in message
    assert "its weights are whole" in out.file.getvalue()
    assert [p.name for p in run.damaged_checkpoints()] == ["damaged-checkpoint-2", "damaged-checkpoint-4"]
    assert all((p / "adapter_model.safetensors").is_file() for p in run.damaged_checkpoints())
    assert run.best_scores() == best_before
    # ...and the way on it offers works: a new run continues from best/.
    child = _config(data, tiny_model_dir, tmp_path / "child", steps=1)
    child.init_from = run.path
    assert train(child, console=_console()).continued


def test_overwrite_drops_the_old_test_score(tmp_path, data, tiny_model_dir):
    run = RunDir(tmp_path / "run")
    config = _config(data, tiny_model_dir, run.path, steps=1, save_steps=1000)
    train(config, console=_console())
    report = run.path / "eval-test"  # as `nerft eval RUN` wrote it, scoring the old weights
    report.mkdir()
    (report / "metrics.json").write_text(
        json.dumps({"scores": {"strict": {"micro": {"f1": 0.99}}}, "sentences": 2}))
    assert list_runs(run.path)[0].test_f1 == 0.99

    train(config, overwrite=True, console=_console())
    assert not report.exists()
    assert list_runs(run.path)[0].test_f1 is None  # `nerft runs` and the export card read this
