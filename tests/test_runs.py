"""`nerft runs`: the runs under a folder, parents first, with their scores and lineage."""

import json

import typer
from typer.testing import CliRunner

from nerft.config import Config
from nerft.data.example import write_jsonl
from nerft.atomic import write_json as write_json_atomic
from nerft.runs.run_dir import init_run_dir
from nerft.runs.listing import list_runs
from nerft.cli.runs import runs


def _data(folder):
    folder.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        write_jsonl(folder / name, [{"id": "1", "text": "张三在北京。", "entities": [
            {"start": 0, "end": 2, "label": "人名", "text": "张三"}]}])
    return folder


def _run(path, data, *, kind="lora", parent=None, steps=None, best=None, test_f1=None):
    """A run directory as `nerft train` (and `nerft eval`) leave it, without the training."""
    config = Config.model_validate({"data": {"dir": str(data)}, "model": {"source": "demo"},
                                    "method": {"kind": kind},
                                    "training": {"output_dir": str(path)}})
    lineage = {"run": str(parent.resolve()), "replay_share": 0.3, "new_labels": ["组织"]} if parent else None
    init_run_dir(config, path, resume=False, labels=["人名"], lineage=lineage)
    if steps is not None:
        (path / "best").mkdir()
        (path / "best" / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
        write_json_atomic(path / "best" / "scores.json", {"step": steps, "eval_f1": best})
        write_json_atomic(path / "summary.json", {"steps": steps, "best_f1": best})
    else:
        (path / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    if test_f1 is not None:
        (path / "eval-test").mkdir()
        write_json_atomic(path / "eval-test" / "metrics.json",
                          {"scores": {"strict": {"micro": {"f1": test_f1}}}})
    return path


def test_runs_lists_parents_first_with_scores_size_and_lineage(tmp_path):
    data = _data(tmp_path / "data")
    root = tmp_path / "runs"
    root.mkdir()
    v1 = _run(root / "v1", data, steps=100, best=0.81, test_f1=0.79)
    _run(root / "a" / "v2", data, parent=v1, steps=40, best=0.84)
    _run(root / "broken", data, kind="full")  # still running: no summary yet
    (root / "notes").mkdir()  # not a run: skipped
    (root / "latest").symlink_to(v1)  # a link to a run: listed once, under its own name

    rows = list_runs(root)
    assert sorted(r.name for r in rows) == ["a/v2", "broken", "v1"] and rows[-1].name == "a/v2"
    by = {r.name: r for r in rows}
    assert by["v1"].parent is None and by["v1"].test_f1 == 0.79 and by["v1"].best_val_f1 == 0.81
    assert by["v1"].size_bytes >= 2048 and by["v1"].steps == 100 and by["v1"].method == "lora"
    assert by["a/v2"].parent == "v1" and by["a/v2"].new_labels == ["组织"] and by["a/v2"].test_f1 is None
    assert by["broken"].state != "finished" and by["broken"].steps == 3 and by["broken"].size_bytes is None
    assert all(r.date and r.data == str(data) for r in rows)

    app = typer.Typer()
    app.command()(runs)
    res = CliRunner().invoke(app, [str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert {r["name"]: r["parent"] for r in json.loads(res.output)} == {"v1": None, "a/v2": "v1", "broken": None}
    res = CliRunner().invoke(app, [str(root)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "a/v2" in res.output and "0.7900" in res.output
    from nerft.cli import app as nerft_app  # the real command, with its one error handler

    res = CliRunner().invoke(nerft_app, ["runs", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.output


def test_runs_reads_a_metrics_file_torn_by_a_kill(tmp_path):
    # Issue 28 items 9 and 12: a run killed while writing metrics.jsonl, its last line torn,
    # and a validation text with U+2028 logged raw by an older nerft.
    run = _run(tmp_path / "runs" / "stopped", _data(tmp_path / "data"))
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 5, "loss": 0.9, "note": "张三\u2028李四"}, ensure_ascii=False) + "\n")
        f.write('{"step": 6, "lo')
    (row,) = list_runs(tmp_path / "runs")
    assert row.steps == 5 and row.state != "finished"
    app = typer.Typer()
    app.command()(runs)
    res = CliRunner().invoke(app, [str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "stopped" in res.output, res.output
