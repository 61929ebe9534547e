"""The real demo model, fetched the way users fetch it, trains on real ccfbdci rows."""

import json

import pytest

from nerft.config import Config
from nerft.data.prepare import prepare, write_prepared
from nerft.train.workflow import train


@pytest.mark.slow
def test_demo_model_takes_lora_steps_on_ccfbdci(tmp_path, shared_data):
    from nerft.model_fetch import fetch_demo

    fetch_demo(progress=False)
    prep = prepare([shared_data / "ccfbdci" / "ccfbdci.jsonl"])
    write_prepared(prep, tmp_path / "data", ratios=(0.7, 0.15, 0.15), seed=42)
    config = Config.model_validate({
        "data": {"dir": str(tmp_path / "data"), "train_limit": 8},
        "model": {"source": "demo"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4,
                     "grad_accum": 1, "lr": 1e-4, "save_steps": 2},
        "eval": {"eval_steps": 2, "val_size": 4, "batch_size": 4, "at_start": False},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)
    assert summary.steps == 2
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [m["loss"] for m in lines if "loss" in m]
    assert len(losses) == 2 and all(0 < l < 10 for l in losses)
    evals = [m for m in lines if "eval_f1" in m]
    assert evals and 0 <= evals[-1]["eval_f1"] <= 1
    assert (tmp_path / "run" / "best" / "adapter_config.json").is_file()
