"""`task.json`: the task an exported model was trained for, so no runtime has to guess it.

Deployed copies of fine-tuned extraction models go wrong when the chat template, the stop tokens
or the system prompt differ from training; this file pins all of them, next to the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from nerft.prompt import LABEL_KEY, NO_ENTITY, TEXT_KEY, Task, user_message
from nerft.chat import end_of_turn_id, stop_token_ids as stop_token_set

TASK_FILE = "task.json"
TASK_FORMAT = "nerft-task/1"


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """nerft's own stop tokens (`nerft.chat.stop_token_ids`), end of turn first: runtimes that
    take one eos id take the first."""
    eot = end_of_turn_id(tokenizer)
    return [eot] + sorted(stop_token_set(tokenizer, generation_config) - {eot})


def task_record(task: Task, tokenizer, generation_config=None, *, base_model: str = "") -> dict:
    """Everything a runtime needs to prompt the model and read its answers exactly as nerft does."""
    stops = stop_token_ids(tokenizer, generation_config)
    return {
        "format": TASK_FORMAT,
        "labels": list(task.labels),
        "system_prompt": task.system_prompt,
        "user_message": user_message("{text}"),
        "answer_format": {
            "kind": "json-lines",
            "line": {TEXT_KEY: "<a substring of the sentence>", LABEL_KEY: "<one of labels>"},
            "text_key": TEXT_KEY,
            "label_key": LABEL_KEY,
            "no_entity": NO_ENTITY,
            "order": "entities in sentence order; repeated mentions map to successive occurrences",
        },
        "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stops],
        "stop_token_ids": stops,
        "chat_template": tokenizer.chat_template,
        "decoding": {"greedy": True, "constrained": True},
        "base_model": base_model,
    }


def write_task(folder: Path, record: dict) -> Path:
    path = Path(folder) / TASK_FILE
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_task(folder: Path) -> dict:
    """The task of an export; the error names the file and field a user must fix."""
    path = Path(folder) / TASK_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    if not isinstance(record, dict) or record.get("format") != TASK_FORMAT:
        raise ValueError(f"{path}: field format is not {TASK_FORMAT!r}")
    labels = record.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: field labels must be a non-empty list of names")
    return record
