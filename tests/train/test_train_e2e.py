"""The whole path encode → train → generate → parse works: a tiny model learns 30 sentences."""

import json

from nerft.config import Config
from nerft.data.example import write_jsonl
from nerft.data.prepare import prepare
from nerft.train.workflow import train


def test_tiny_model_memorises_its_training_entities(tmp_path, shared_data):
    from nerft.tiny import tiny_qwen2

    prep = prepare([shared_data / "ccfbdci" / "ccfbdci.jsonl"])
    rows = [ex for ex in prep.splits["train"] if ex.entities and len(ex.text) <= 40][:30]
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl"):  # validation on the training rows: memorisation
        write_jsonl(data / name, (ex.to_dict() for ex in rows))
    (data / "stats.json").write_text(json.dumps({"labels": prep.labels}, ensure_ascii=False))

    model = tiny_qwen2(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256)
    config = Config.model_validate({
        "data": {"dir": str(data)},
        "model": {"source": str(model)},
        "method": {"kind": "full"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 150, "batch_size": 10,
                     "grad_accum": 1, "lr": 5e-3, "warmup_ratio": 0.05, "save_steps": 1000},
        "eval": {"eval_steps": 150, "val_size": 30, "batch_size": 30},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)

    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.1 * losses[0]
    assert summary.initial_f1 < 0.1  # constrained decoding lets a random model hit a few
    assert summary.best_f1 >= 0.9 and summary.best_step == 150
    # Per label at the best step: every gold mention counted once, each label scored.
    per_label = summary.best_per_label
    assert sum(v["support"] for v in per_label.values()) == sum(len(ex.entities) for ex in rows)
    assert set(per_label) == {s.label for ex in rows for s in ex.entities}
    assert all(v["f1"] >= 0.8 for v in per_label.values() if v["support"] >= 3)
    scores = json.loads((tmp_path / "run" / "best" / "scores.json").read_text())
    assert scores["step"] == 150 and scores["eval_f1"] == summary.best_f1
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["labels"] == prep.labels and set(run_info["data_sha256"]) == {"train.jsonl", "val.jsonl"}
    assert run_info["versions"]["torch"] and "seed" in run_info
