"""The whole path encode → train → generate → parse works: a tiny model learns 30 sentences.

The training itself is the shared `learned_run` fixture (tests/conftest.py): 150 full
fine-tuning steps on 30 real ccfbdci sentences, validated on the same rows.
"""

import json

from nerft.data.example import read_examples


def test_tiny_model_memorises_its_training_entities(learned_run):
    run, data, _ = learned_run
    rows = list(read_examples(data / "val.jsonl"))
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.1 * losses[0]
    # The fixture skips the step-0 score (it costs a minute); the untrained base is scored on
    # these rows in tests/eval/test_compare.py, far below the run.
    assert summary["initial_f1"] is None
    assert summary["best_f1"] >= 0.9 and summary["best_step"] == 150
    # Per label at the best step: every gold mention counted once, each label scored.
    per_label = summary["best_per_label"]
    assert sum(v["support"] for v in per_label.values()) == sum(len(ex.entities) for ex in rows)
    assert set(per_label) == {s.label for ex in rows for s in ex.entities}
    assert all(v["f1"] >= 0.8 for v in per_label.values() if v["support"] >= 3)
    scores = json.loads((run / "best" / "scores.json").read_text())
    assert scores["step"] == 150 and scores["eval_f1"] == summary["best_f1"]
    run_info = json.loads((run / "run.json").read_text())
    labels = json.loads((data / "stats.json").read_text())["labels"]
    assert run_info["labels"] == labels and set(run_info["data_sha256"]) == {"train.jsonl", "val.jsonl", "test.jsonl"}
    assert run_info["versions"]["torch"] and "seed" in run_info
    # What the run trained on, before and after down-sampling entity-free rows, adds up.
    counts, train = run_info["training_rows"], list(read_examples(data / "train.jsonl"))
    assert counts["with_entities"] == sum(1 for ex in train if ex.entities)
    assert counts["entity_free_read"] == sum(1 for ex in train if not ex.entities)
    assert counts["entity_free_kept"] <= counts["entity_free_read"]
