"""The task record (`task.json`): the task an exported model was trained for, so no runtime has
to guess it.

Deployed copies of fine-tuned extraction models go wrong when the chat template, the stop tokens
or the system prompt differ from training; this record pins all of them, next to the weights.
What it says about the task (labels, guidelines, answer format) is the Task's own (`Task.record`,
`task_from_record`); the file itself belongs to `ExportDir`.
"""

from __future__ import annotations

from pathlib import Path

from nerft.task.chat import end_of_turn_id, stop_token_ids as stop_token_set
from nerft.errors import NerftError
from nerft.export_dir import TASK_FILE, ExportDir, ExportDirError
from nerft.task.bio import tag_names
from nerft.task.prompt import Task, TaskError, task_from_record, user_message

TASK_FORMAT = "nerft-task/1"


class TaskFileError(NerftError, ValueError):
    """An export's task.json that cannot be read or names a task no model can have."""


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """nerft's own stop tokens (`nerft.task.chat.stop_token_ids`), end of turn first: runtimes that
    take one eos id take the first."""
    eot = end_of_turn_id(tokenizer)
    return [eot] + sorted(stop_token_set(tokenizer, generation_config) - {eot})


def task_record(task: Task, tokenizer, generation_config=None, *, base_model: str = "",
                head: str = "generate") -> dict:
    """Everything a runtime needs to prompt the model and read its answers exactly as nerft does.
    A tagging head (method.head tagger) generates nothing: its record says so and names the
    tags of its output rows instead of the decoding."""
    stops = stop_token_ids(tokenizer, generation_config)
    described = task.record()  # labels, guidelines (when any), answer_format, answer
    decoding = {"greedy": True, "constrained": True} if head == "generate" else \
        {"tagger": "BIO tags of the sentence's tokens (nerft.task.bio)", "tags": tag_names(task.labels)}
    return {
        "format": TASK_FORMAT,
        "labels": described.pop("labels"),
        **({"guidelines": described.pop("guidelines")} if "guidelines" in described else {}),
        "system_prompt": task.system_prompt,
        "user_message": user_message("{text}"),
        **described,
        "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stops],
        "stop_token_ids": stops,
        "chat_template": tokenizer.chat_template,
        "decoding": decoding,
        "base_model": base_model,
        "head": head,
    }


def write_task(folder: Path, record: dict) -> Path:
    return ExportDir(folder).write_task(record)


def read_task(folder: Path) -> dict:
    """The task record of an export folder, checked (`check_task_record`)."""
    export = ExportDir(folder)
    try:
        record = export.read_task()
    except ExportDirError as e:
        raise TaskFileError(str(e)) from None
    return check_task_record(record, export.task_file)


def check_task_record(record, where) -> dict:
    """`record` when it describes a task nerft can prompt (then `task_of(record)` cannot fail);
    otherwise a TaskFileError naming `where` (the file) and the field a user must fix."""
    if not isinstance(record, dict) or record.get("format") != TASK_FORMAT:
        raise TaskFileError(f"{where}: field format is not {TASK_FORMAT!r}")
    try:
        task_from_record(record, where)
    except TaskError as e:
        raise TaskFileError(str(e)) from None
    return record


def task_of(record: dict) -> Task:
    """The Task a checked task.json record describes (labels and answer format)."""
    return task_from_record(record, TASK_FILE)


def load_task(folder: Path) -> Task:
    """The Task of an export folder, from its task.json."""
    return task_of(read_task(folder))
