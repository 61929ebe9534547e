"""`task.json`: the task an exported model was trained for, so no runtime has to guess it.

Deployed copies of fine-tuned extraction models go wrong when the chat template, the stop tokens
or the system prompt differ from training; this file pins all of them, next to the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from nerft.prompt import LABEL_KEY, NO_ENTITY, TEXT_KEY, Task, user_message
from nerft.train.encode import end_of_turn_id

TASK_FILE = "task.json"
TASK_FORMAT = "nerft-task/1"


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The end-of-turn token first, then the model's other eos ids (e.g. <|endoftext|>)."""
    ids = [end_of_turn_id(tokenizer)]
    eos = getattr(generation_config, "eos_token_id", None)
    for extra in (eos if isinstance(eos, list) else [] if eos is None else [eos]):
        if extra not in ids:
            ids.append(extra)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    # ChatML models end documents with <|endoftext|>; Qwen2.5-Instruct stops at both.
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(end_of_text, int) and end_of_text != tokenizer.unk_token_id and end_of_text not in ids:
        ids.append(end_of_text)
    return ids


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
