import json

from nerft.config import Config
from nerft.train.workflow import train


def _config(prepared, model_dir, tmp_path, *, lr: float) -> Config:
    """20 steps of 2 rows, validation on 2 sentences after every step, patience 2."""
    return Config.model_validate({
        "data": {"dir": str(prepared), "train_limit": 40},
        "model": {"source": str(model_dir)},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 20, "batch_size": 2,
                     "grad_accum": 1, "lr": lr, "save_steps": 100},
        "eval": {"eval_steps": 1, "val_size": 2, "batch_size": 2, "early_stopping_patience": 2},
        "tracking": {"swanlab": "off"},
    })


def test_training_stops_when_f1_stops_improving(tmp_path, tiny_model_dir, prepared):
    config = _config(prepared, tiny_model_dir, tmp_path, lr=1e-5)
    summary = train(config)
    # A random tiny model at a tiny learning rate never finds an entity: F1 stays 0, so the
    # best is the first evaluation (step 0) and two evaluations without improvement end it.
    assert summary.stopped_early and summary.steps == 2
    assert summary.best_step == 0 and summary.best_f1 == 0.0
    evals = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").open()
             if "eval_f1" in l]
    assert evals == [0, 1, 2]
    assert (tmp_path / "run" / "val_predictions.jsonl").is_file()


def test_f1_that_improves_then_plateaus_stops_and_keeps_the_best_steps_weights(
        tmp_path, tiny_model_dir, prepared, monkeypatch):
    """A real tiny run whose validation F1 is scripted to rise, then plateau.

    The controlled hook: `Validation.__call__` runs for real (the model decodes the validation
    rows and they are scored), then its micro F1 is replaced by the next value of SCRIPT, because
    a random tiny model's own F1 stays 0. The hook also copies the LoRA weights at every
    evaluation, so `best/` can be compared with the weights of the step it claims to hold."""
    import torch
    from safetensors.torch import load_file

    from nerft.train import trainer as trainer_module

    script = [0.1, 0.3, 0.6, 0.6, 0.5, 0.9, 0.9]  # steps 0..6; best at step 2, then 2 without gain
    real = trainer_module.Validation.__call__
    seen: list[dict] = []
    weights: list[dict] = []

    def scripted(self, model):
        scores = real(self, model)
        assert len(self.last_predictions) == 2  # the rows were really decoded
        seen.append(scores)
        weights.append({n.replace(".default", ""): p.detach().clone()
                        for n, p in model.named_parameters() if "lora_" in n})
        return {**scores, "f1": script[len(seen) - 1]}

    monkeypatch.setattr(trainer_module.Validation, "__call__", scripted)
    config = _config(prepared, tiny_model_dir, tmp_path, lr=1e-2)
    summary = train(config)

    assert summary.stopped_early and summary.steps == 4  # evaluations at 3 and 4 did not improve
    assert summary.best_step == 2 and summary.best_f1 == 0.6
    evals = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open() if "eval_f1" in l]
    assert [(e["step"], e["eval_f1"]) for e in evals] == list(zip(range(5), script))
    best = tmp_path / "run" / "best"
    assert json.loads((best / "scores.json").read_text())["step"] == 2
    saved = load_file(str(best / "adapter_model.safetensors"))
    assert saved and set(saved) == set(weights[2])
    for name, tensor in saved.items():
        assert torch.equal(tensor, weights[2][name]), name
    # Guard: training kept changing the weights, so the last step's would not pass for the best's.
    assert any(not torch.equal(saved[n], weights[4][n]) for n in saved)
