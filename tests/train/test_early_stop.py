import json

from nerft.config import Config
from nerft.train.workflow import train


def test_training_stops_when_f1_stops_improving(tmp_path, tiny_model_dir, prepared):
    config = Config.model_validate({
        "data": {"dir": str(prepared), "train_limit": 40},
        "model": {"source": str(tiny_model_dir)},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 20, "batch_size": 2,
                     "grad_accum": 1, "lr": 1e-5, "save_steps": 100},
        "eval": {"eval_steps": 1, "val_size": 2, "batch_size": 2, "early_stopping_patience": 2},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)
    # A random tiny model at a tiny learning rate never finds an entity: F1 stays 0, so the
    # best is the first evaluation (step 0) and two evaluations without improvement end it.
    assert summary.stopped_early and summary.steps == 2
    assert summary.best_step == 0 and summary.best_f1 == 0.0
    evals = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").open()
             if "eval_f1" in l]
    assert evals == [0, 1, 2]
    assert (tmp_path / "run" / "val_predictions.jsonl").is_file()
