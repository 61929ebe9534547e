"""init_from: a child run really starts where its parent ended, replays its rows reproducibly,
and records its lineage; labels its parent never saw are added."""

import json
import shutil

import pytest

from nerft.config import Config, ConfigError, load_config
from nerft.data.example import Example, Span, write_jsonl
from nerft.runs.run_dir import RunDir
from nerft.train.continual import ContinueError, replay_rows
from nerft.train.workflow import TrainError, train

PARENT_ROWS = [
    ("张三在北京工作。", [(0, 2, "人名"), (3, 5, "地点")]),
    ("李四去了上海。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("王五昨天回到广州。", [(0, 2, "人名"), (6, 8, "地点")]),
    ("赵六住在杭州西湖边。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("今天南京下雨了。", [(2, 4, "地点")]),
    ("陈七和刘八在成都见面。", [(0, 2, "人名"), (3, 5, "人名"), (6, 8, "地点")]),
    ("天气很好。", []),
    ("周九从武汉出发。", [(0, 2, "人名"), (3, 5, "地点")]),
]
MORE_ROWS = [  # new data, the parent's labels only
    ("孙十在西安读书。", [(0, 2, "人名"), (3, 5, "地点")]),
    ("会议在重庆举行。", [(3, 5, "地点")]),
    ("吴明去天津看望朋友。", [(0, 2, "人名"), (3, 5, "地点")]),
    ("郑华住在长沙。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("大家都很高兴。", []),
    ("林强从厦门来到青岛。", [(0, 2, "人名"), (3, 5, "地点"), (7, 9, "地点")]),
]
NEW_ROWS = [  # the new data brings a label the parent never saw
    ("华为在深圳发布新手机。", [(0, 2, "组织"), (3, 5, "地点")]),
    ("小米的总部在北京。", [(0, 2, "组织"), (6, 8, "地点")]),
    ("马云创办了阿里巴巴。", [(0, 2, "人名"), (5, 9, "组织")]),
    ("腾讯位于深圳南山。", [(0, 2, "组织"), (4, 6, "地点")]),
    ("孙十加入了百度。", [(0, 2, "人名"), (5, 7, "组织")]),
    ("会议在西安举行。", [(3, 5, "地点")]),
]


def _write(folder, rows, labels, val_rows=None):
    folder.mkdir(parents=True)
    exs = [Example(f"{folder.name}:{i}", t, [Span(s, e, lb, t[s:e]) for s, e, lb in spans])
           for i, (t, spans) in enumerate(rows)]
    write_jsonl(folder / "train.jsonl", (ex.to_dict() for ex in exs))
    if val_rows is None:
        write_jsonl(folder / "val.jsonl", (ex.to_dict() for ex in exs))
    elif val_rows == "empty":  # as `nerft data prepare --split 1,0,0` writes a few corrections
        (folder / "val.jsonl").write_text("", encoding="utf-8")
    else:
        shutil.copy(val_rows, folder / "val.jsonl")
    (folder / "stats.json").write_text(json.dumps({"labels": labels}, ensure_ascii=False))
    return folder


def _config(data, model, out, **extra):
    raw = {"data": {"dir": str(data)}, "model": {"source": str(model)},
           "method": {"kind": "lora", "lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.0},
           "training": {"output_dir": str(out), "max_steps": 4, "batch_size": 4, "grad_accum": 1,
                        "lr": 5e-3, "save_steps": 1000, "scheduler": "constant"},
           "eval": {"eval_steps": 4, "val_size": 8, "batch_size": 8, "at_start": False},
           "tracking": {"swanlab": "off"}}
    for key, value in extra.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return Config.model_validate(raw)


def _eval_losses(run):
    return {m["step"]: m["eval_loss"] for m in map(json.loads, (run / "metrics.jsonl").open())
            if "eval_loss" in m}


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("parent")
    data = _write(root / "old", PARENT_ROWS, ["人名", "地点"])
    summary = train(_config(data, tiny_model_dir, root / "run"))
    assert summary.steps == 4
    return root / "run", data


def test_child_starts_at_its_parents_validation_loss_and_records_lineage(parent, tmp_path, tiny_model_dir):
    parent_run, old = parent
    new = _write(tmp_path / "new", MORE_ROWS, ["人名", "地点"], val_rows=old / "val.jsonl")
    child = tmp_path / "child"
    config = _config(new, tiny_model_dir, child, eval__at_start=True, training__max_steps=1,
                     eval__eval_steps=1)
    config.init_from = parent_run
    summary = train(config)

    parent_loss = _eval_losses(parent_run)[4]  # the parent's only (and best) evaluation
    assert abs(_eval_losses(child)[0] - parent_loss) < 1e-5
    info = RunDir(child).info()
    lineage = info["init_from"]
    assert lineage["run"] == str(parent_run.resolve()) and lineage["parent_kind"] == "lora"
    assert lineage["replay_share"] == 0.3 and lineage["new_rows"] == 6
    assert lineage["replay_rows"] == 3 == len(lineage["replay_ids"])  # 3 / (3 + 6) ~ 0.3
    assert all(i.startswith("old:") for i in lineage["replay_ids"])
    assert lineage["parent_data_sha256"] == RunDir(parent_run).info()["data_sha256"]
    assert info["labels"] == ["人名", "地点"] and lineage["new_labels"] == [] == list(summary.new_labels)
    assert RunDir(child).parent().path == parent_run.resolve()


def test_new_data_without_validation_rows_validates_on_the_parents(parent, tmp_path, tiny_model_dir):
    parent_run, old = parent
    new = _write(tmp_path / "corrections", MORE_ROWS[:2], ["人名", "地点"], val_rows="empty")
    # eval.at_start is off (as in configs/demo-cpu.yaml): a child scores its parent anyway.
    config = _config(new, tiny_model_dir, tmp_path / "child", training__max_steps=1, eval__eval_steps=1)
    assert config.eval.at_start is False
    config.init_from = parent_run
    summary = train(config)
    assert summary.continued and summary.initial_f1 is not None
    assert abs(_eval_losses(tmp_path / "child")[0] - _eval_losses(parent_run)[4]) < 1e-5
    lineage = RunDir(tmp_path / "child").info()["init_from"]
    assert lineage["validation_rows_from"] == str((old / "val.jsonl").resolve())
    assert lineage["new_rows"] == 2

    no_parent = _config(new, tiny_model_dir, tmp_path / "alone")
    with pytest.raises(TrainError, match="must both have rows .*init_from"):
        train(no_parent)


def test_labels_the_parent_never_saw_are_added_after_its_own(parent, tmp_path, tiny_model_dir):
    parent_run, _ = parent
    new = _write(tmp_path / "new", NEW_ROWS, ["组织", "地点", "人名"])
    config = _config(new, tiny_model_dir, tmp_path / "child", training__max_steps=1,
                     eval__eval_steps=1000, data__replay_share=0.5)
    config.init_from = parent_run
    summary = train(config)
    info = RunDir(tmp_path / "child").info()
    assert info["labels"] == ["人名", "地点", "组织"] and list(summary.new_labels) == ["组织"]
    assert info["init_from"]["replay_rows"] == 6 and info["init_from"]["new_labels"] == ["组织"]


def test_replay_rows_are_a_seeded_share():
    rows = [Example(str(i), f"句子{i}") for i in range(100)]
    first = replay_rows(rows, 70, 0.3, seed=1)
    assert len(first) == 30 and first == replay_rows(rows, 70, 0.3, seed=1)
    assert first != replay_rows(rows, 70, 0.3, seed=2)
    assert [int(r.id) for r in first] == sorted(int(r.id) for r in first)
    assert len(replay_rows(rows, 1000, 0.5, seed=1)) == 100  # never more than the parent had
    assert replay_rows(rows, 70, 0.0, seed=1) == []


def test_init_from_a_folder_that_is_not_a_run_is_one_line(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "d", PARENT_ROWS, ["人名", "地点"])
    config = _config(data, tiny_model_dir, tmp_path / "run")
    config.init_from = tmp_path / "d"
    with pytest.raises(ContinueError, match="init_from: .*not a `nerft train` run"):
        train(config)


def test_replay_share_is_checked_in_the_config(tmp_path):
    data = _write(tmp_path / "d", PARENT_ROWS, ["人名", "地点"])
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{dir: {data}}}\nmodel: {{source: demo}}\n")
    with pytest.raises(ConfigError, match="data.replay_share"):
        load_config(path, ["data.replay_share=1.5"])
    assert load_config(path, ["init_from=runs/x"]).init_from.name == "x"


def test_a_full_fine_tuned_parent_is_the_starting_model(learned_run, tmp_path):
    parent_run, data, base = learned_run  # full fine-tuning; its val.jsonl is its train.jsonl
    new = _write(tmp_path / "new", MORE_ROWS, ["人名", "地点"], val_rows=data / "val.jsonl")
    (new / "stats.json").write_text((data / "stats.json").read_text(encoding="utf-8"))
    config = _config(new, base, tmp_path / "child", method__kind="full", eval__at_start=True,
                     training__max_steps=1, eval__eval_steps=1000, eval__val_size=30,
                     eval__batch_size=30)  # the parent's batching: the same loss average
    config.init_from = parent_run
    train(config)
    parent_last = max(_eval_losses(parent_run).items())[1]
    assert abs(_eval_losses(tmp_path / "child")[0] - parent_last) < 1e-5
    assert RunDir(tmp_path / "child").info()["init_from"]["parent_kind"] == "full"

    from nerft.runs.listing import list_runs

    (row,) = list_runs(tmp_path)
    assert row.parent == str(parent_run.resolve()) and row.method == "full"


def test_a_full_parent_cannot_grow_an_adapter(learned_run, tmp_path):
    parent_run, data, base = learned_run
    config = _config(data, base, tmp_path / "child")  # method lora
    config.init_from = parent_run
    with pytest.raises(ContinueError, match="method.kind=full or freeze"):
        train(config)


def test_a_parent_trained_on_a_relative_data_dir_is_found_from_elsewhere(tmp_path, tiny_model_dir, monkeypatch):
    root = tmp_path / "project"
    _write(root / "old", PARENT_ROWS, ["人名", "地点"])
    monkeypatch.chdir(root)
    train(_config("old", tiny_model_dir, root / "run", training__max_steps=1, eval__eval_steps=1000))
    assert RunDir(root / "run").info()["data_dir"] == str(root / "old")  # recorded absolute

    monkeypatch.chdir(tmp_path)  # the child starts from another folder
    new = _write(tmp_path / "corrections", MORE_ROWS[:2], ["人名", "地点"], val_rows="empty")
    config = _config(new, tiny_model_dir, tmp_path / "child", training__max_steps=1, eval__eval_steps=1000)
    config.init_from = root / "run"
    train(config)
    lineage = RunDir(tmp_path / "child").info()["init_from"]
    assert lineage["replay_rows"] == 1 and lineage["validation_rows_from"] == str(root / "old" / "val.jsonl")


def test_compact_answer_format_runs_end_to_end_and_stays_with_the_model(parent, tmp_path, tiny_model_dir,
                                                                      gbnf_accepts):
    """data.answer_format=compact: training writes compact answers, the run records the format,
    inference on the run prompts and reads that format, a continued run must keep it, and a
    merged export passes its parity check in it and names it in task.json (read back by predict)."""
    from nerft.export.workflow import export_run
    from nerft.infer.predict import predict
    from nerft.models.loader import load_model

    data = _write(tmp_path / "d", PARENT_ROWS, ["人名", "地点"])
    train(_config(data, tiny_model_dir, tmp_path / "compact", training__max_steps=1,
                  eval__eval_steps=1, data__answer_format="compact"))
    run = RunDir(tmp_path / "compact")
    assert run.answer_format() == "compact" and RunDir(parent[0]).answer_format() == "json"
    model, tokenizer, task = load_model(str(run.path))
    assert task.answer_format == "compact" and '"实体文本": "实体类型"' in task.system_prompt
    texts = [(str(i), t) for i, (t, _) in enumerate(PARENT_ROWS)]
    preds = predict(model, tokenizer, task, texts)
    # constrained decoding in the compact format: every answer parses in it
    assert all(p.parsed.well_formed and not p.answer.startswith("{") for p in preds), \
        [p.answer for p in preds]

    child = _config(data, tiny_model_dir, tmp_path / "child", data__answer_format="compact")
    child.init_from = parent[0]
    with pytest.raises(ContinueError, match="data.answer_format=json"):
        train(child)
    export_run(run.path, tmp_path / "export", merge=True, probes=2)
    record = json.loads((tmp_path / "export" / "task.json").read_text(encoding="utf-8"))
    assert record["answer_format"] == "compact" and record["answer"]["line"].startswith('"')
    assert load_model(str(tmp_path / "export"))[2] == task
    assert "Answer format (compact)" in (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    # the GBNF grammar of the exported task (what answer.gbnf holds) accepts the run's answers
    from nerft.export.grammar import answer_grammar
    from nerft.export.task_file import task_of

    grammar = answer_grammar(task_of(record))
    for p in preds:
        assert gbnf_accepts(grammar, p.answer), p.answer


def test_planning_a_child_reads_its_parent_without_changing_its_config(parent, tmp_path, tiny_model_dir):
    """The child starts from what the one loader says the parent is, and only `start` assigns
    the child's config (its model.source becomes the parent's base): the helpers are pure."""
    from rich.console import Console

    from nerft.models.loader import describe
    from nerft.train import continual

    run, data = parent
    config = _config(data, tmp_path / "another-base", tmp_path / "child")
    config.init_from = run
    before = config.model_dump()
    lineage = continual.plan(continual.open_parent(config), config, [], ("人名", "地点"))
    continual.check_kinds(lineage.parent_kind, config.method.kind)
    assert continual.child_model_source(lineage) == str(tiny_model_dir)
    found = describe(str(run))
    assert found.weights == str(tiny_model_dir) and found.adapter == RunDir(run).weights()
    assert config.model_dump() == before

    lineage = continual.start(config, [], ("人名", "地点"), Console(quiet=True))
    assert (lineage.source, lineage.tokenizer_folder) == (str(tiny_model_dir), None)
    assert config.model.source == str(tiny_model_dir)
