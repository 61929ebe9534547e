"""How Label Studio and doccano export what nerft gave them, every pre-annotation accepted
unchanged: the exports a team brings back, written by hand from the tools' documented formats
(Label Studio's JSON export, doccano's sequence-labeling JSONL export and its exporter code).
Shared by the data tests and the select/predict CLI tests."""

import copy
import json


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def label_studio_export(tasks_file):
    """The JSON export of a project that imported `tasks_file` and had every prediction
    accepted as it was (Label Studio copies the prediction's result into the annotation)."""
    tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    exported = []
    for i, task in enumerate(tasks, 1):
        prediction = task["predictions"][0]
        result = [dict(copy.deepcopy(r), origin="prediction") for r in prediction["result"]]
        exported.append({
            "id": 100 + i,
            "annotations": [{
                "id": 500 + i, "completed_by": 1, "result": result, "was_cancelled": False,
                "ground_truth": False, "created_at": f"2026-12-01T10:{i % 60:02d}:00.000000Z",
                "updated_at": f"2026-12-01T10:{i % 60:02d}:00.000000Z", "draft_created_at": None,
                "lead_time": 3.5, "prediction": {}, "result_count": 0, "unique_id": f"u-{i}",
                "import_id": None, "last_action": None, "task": 100 + i, "project": 1,
                "updated_by": 1, "parent_prediction": 900 + i, "parent_annotation": None,
                "last_created_by": None}],
            "file_upload": "1a2b3c4d-tasks.json", "drafts": [], "predictions": [900 + i],
            "data": task["data"], "meta": {}, "created_at": "2026-12-01T09:00:00.000000Z",
            "updated_at": "2026-12-01T10:00:00.000000Z", "inner_id": i, "total_annotations": 1,
            "cancelled_annotations": 0, "total_predictions": 1, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
            "updated_by": 1, "comment_authors": []})
    return exported


def doccano_export(tasks_file, with_relations=False):
    """doccano's JSONL export of a project that imported `tasks_file` unchanged: its own id
    first, the import's other keys kept as metadata, spans sorted, "Comments" added."""
    lines = []
    for i, row in enumerate(read_jsonl(tasks_file), 1):
        meta = {k: v for k, v in row.items() if k not in ("text", "label")}
        spans = sorted(row["label"])
        if with_relations:
            line = {"id": 40 + i, "text": row["text"], **meta,
                    "entities": [{"id": 700 + k, "label": label, "start_offset": s, "end_offset": e}
                                 for k, (s, e, label) in enumerate(spans)],
                    "relations": [], "Comments": []}
        else:
            line = {"id": 40 + i, "text": row["text"], **meta, "label": spans, "Comments": []}
        lines.append(json.dumps(line, ensure_ascii=False))
    return "\n".join(lines) + "\n"
