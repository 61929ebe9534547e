import json

import pytest
import torch

from nerft.data.example import Example, Span
from nerft.train.sampling import cap_empty_share


def rows(full, empty):
    out = [Example(f"f{i}", "张三来了。", [Span(0, 2, "人名", "张三")]) for i in range(full)]
    out += [Example(f"e{i}", "今天下雨。", []) for i in range(empty)]
    return out


def test_entity_free_rows_are_capped_and_every_entity_row_kept():
    kept, report = cap_empty_share(rows(20, 80), 0.5, seed=1)
    assert sum(1 for ex in kept if ex.entities) == 20
    assert sum(1 for ex in kept if not ex.entities) == 20 == report.empty_kept
    assert report.empty_before == 80
    assert cap_empty_share(rows(20, 80), 0.5, seed=1)[0] == kept  # seeded
    assert cap_empty_share(rows(20, 80), 0.5, seed=2)[0] != kept
    assert cap_empty_share(rows(20, 80), None, seed=1)[0] == rows(20, 80)
    assert [ex for ex in cap_empty_share(rows(20, 80), 0.0, seed=1)[0]] == rows(20, 0)


def test_training_on_rows_without_any_entity_says_why_it_has_nothing(tmp_path, tiny_model_dir):
    from nerft.config import Config
    from nerft.data.example import write_jsonl
    from nerft.train.workflow import TrainError, train

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", (ex.to_dict() for ex in rows(0, 6)))
    write_jsonl(data / "val.jsonl", (ex.to_dict() for ex in rows(2, 0)))
    config = Config.model_validate({"data": {"dir": str(data)}, "model": {"source": str(tiny_model_dir)},
                                    "training": {"output_dir": str(tmp_path / "run")},
                                    "tracking": {"swanlab": "off"}})
    with pytest.raises(TrainError, match="no training row has an entity.*max_empty_share=null"):
        train(config)
    assert not (tmp_path / "run" / "run.json").exists()  # nothing half-written


def test_learning_rate_auto_and_the_long_run_warning(tmp_path, tiny_model_dir):
    import io

    from rich.console import Console

    from nerft.config import Config
    from nerft.data.example import write_jsonl
    from nerft.train.schedule import long_run_lr_warning, resolve_lr
    from nerft.train.workflow import train

    # auto: the rates the learning curve measured (1e-3 learnt over 23-157 steps, 2e-4 over 357)
    assert resolve_lr("auto", 157) == resolve_lr("auto", 200) == 1e-3
    assert resolve_lr("auto", 201) == resolve_lr("auto", 357) == 2e-4
    assert resolve_lr(5e-5, 10_000) == 5e-5
    assert long_run_lr_warning("lora", 1e-3, 357) is not None
    assert long_run_lr_warning("dora", 1e-3, 201) is not None
    assert long_run_lr_warning("lora", 1e-3, 200) is None
    assert long_run_lr_warning("lora", 2e-4, 5000) is None
    assert long_run_lr_warning("full", 1e-3, 5000) is None  # measured for adapters only

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", (ex.to_dict() for ex in rows(6, 2)))
    write_jsonl(data / "val.jsonl", (ex.to_dict() for ex in rows(2, 0)))

    def run(lr, name):
        # 8 rows, batch 1, 40 epochs: 320 planned steps; each run stops after two flat
        # validations (patience 1): what is checked is said before training starts.
        config = Config.model_validate({
            "data": {"dir": str(data), "max_empty_share": None},
            "model": {"source": str(tiny_model_dir)},
            "training": {"output_dir": str(tmp_path / name), "epochs": 40, "batch_size": 1,
                         "grad_accum": 1, "lr": lr, "save_steps": 1, "num_threads": 1},
            "eval": {"eval_steps": 1, "at_start": False, "val_size": 2, "early_stopping_patience": 1},
            "tracking": {"swanlab": "off"}})
        out = io.StringIO()
        summary = train(config, console=Console(file=out, width=400))
        assert summary.steps < 320
        return out.getvalue(), [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]

    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        printed, _ = run(1e-3, "fixed")
        assert torch.get_num_threads() == 3  # training.num_threads held for that run only
    finally:
        torch.set_num_threads(threads)
    assert "training.lr=0.001 over 320 optimizer steps" in printed
    assert "consider training.lr=2e-4 or training.lr=auto" in printed
    printed, metrics = run("auto", "auto")
    assert "training.lr auto: 0.0002 for 320 optimizer steps" in printed
    assert "consider" not in printed
    # the optimiser ran at it: warm-up 0, cosine from 2e-4
    rates = [m["learning_rate"] for m in metrics if "learning_rate" in m]
    assert rates and max(rates) <= 2e-4 and rates[0] > 1.9e-4
