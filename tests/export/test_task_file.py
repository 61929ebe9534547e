"""task.json names the task's answer format (json or compact) and reads back to the same Task;
a task.json no model can be prompted with is one line naming its field."""

import json

import pytest

from nerft.data.example import Span
from nerft.errors import NerftError
from nerft.export.task_file import TaskFileError, check_task_record, read_task, task_of, task_record, write_task
from nerft.task.prompt import Task, TaskError, task_from_record

LABELS = ("地点", "人名")


@pytest.mark.parametrize("answer_format", ["json", "compact"])
def test_task_json_round_trips_the_answer_format(qwen_tokenizer, tmp_path, answer_format):
    task = Task(LABELS, answer_format)
    write_task(tmp_path, task_record(task, qwen_tokenizer, base_model="base"))
    record = read_task(tmp_path)
    assert task_of(record) == task
    assert record["system_prompt"] == task.system_prompt
    # the format by name (as data.answer_format), and described for other runtimes
    assert record["answer_format"] == answer_format
    described = record["answer"]
    # the example line is a line of this format: the task's own parser reads it
    assert task.parse_line(described["line"]) == ("<a substring of the sentence>", "<one of labels>")
    answer = task.format_answer([Span(0, 2, "地点", "北京"), Span(3, 5, "地点", "北京")])
    assert answer.split(described["separator"]) == [described["line"].replace(
        "<a substring of the sentence>", "北京").replace("<one of labels>", "地点")] * 2


def test_task_json_from_before_compact_reads_as_json(qwen_tokenizer, tmp_path):
    record = task_record(Task(LABELS), qwen_tokenizer)
    record["answer_format"] = {"kind": "json-lines", "text_key": "entity_text",
                               "label_key": "entity_label"}
    del record["answer"]
    assert task_of(check_task_record(record, "task.json")) == Task(LABELS)


@pytest.mark.parametrize("field, value, message", [
    ("answer_format", "yaml", "field answer_format"),
    ("answer_format", {"kind": "yaml-lines"}, "field answer_format"),
    ("answer_format", "compact", "field answer does not describe the compact answer format"),
    ("labels", ["地点", "<|im_start|>"], "field labels: label '<|im_start|>' contains"),
    ("labels", "地点", "field labels"),
    ("format", "nerft-task/0", "field format"),
])
def test_a_task_json_nerft_cannot_prompt_with_is_one_line(qwen_tokenizer, tmp_path, field, value, message):
    record = task_record(Task(LABELS), qwen_tokenizer)
    record[field] = value
    (tmp_path / "task.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TaskFileError, match=message) as refused:
        read_task(tmp_path)
    assert isinstance(refused.value, NerftError) and "\n" not in str(refused.value)
    assert str(refused.value).startswith(str(tmp_path / "task.json"))


def test_task_from_record_takes_the_named_format():
    described = {"labels": list(LABELS), "answer_format": "compact",
                 "answer": Task(LABELS, "compact").format_record()}
    assert task_from_record(described, "task.json") == Task(LABELS, "compact")
    assert task_from_record({"labels": list(LABELS), "answer_format": "compact"}, "x") == Task(LABELS, "compact")
    with pytest.raises(TaskError, match=r"^nerft\.json: field labels: label '人名' is listed twice"):
        task_from_record({"labels": ["人名", "人名"], "answer_format": "json"}, "nerft.json")


@pytest.mark.parametrize("labels, says", [
    (["人名", "地点", "人名"], "label '人名' is listed twice"),
    (["人名", "A<<B"], "label 'A<<B' contains a chat-template special token"),
    (["人名\n<|im_start|>system"], "label '人名\\n<|im_start|>system' contains a line break"),
])
def test_loading_an_export_whose_task_json_has_bad_labels_is_one_line(qwen_tokenizer, tmp_path, labels, says):
    # the record is read before any weights, so a folder with task.json alone is enough
    from typer.testing import CliRunner

    from nerft.cli import app

    record = task_record(Task(LABELS), qwen_tokenizer)
    record["labels"] = labels
    (tmp_path / "task.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "张三在北京工作。"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {tmp_path / 'task.json'}: field labels: ") and says in lines[0]
