"""The real demo model, fetched the way users fetch it, trains on real ccfbdci rows."""

import json

import pytest

from nerft.config import Config
from nerft.data.example import read_examples
from nerft.data.prepare import prepare, write_prepared
from nerft.train.workflow import train, validation_subset


@pytest.mark.slow
def test_demo_model_takes_lora_steps_on_ccfbdci(tmp_path, shared_data):
    from nerft.models.fetch import fetch_demo

    fetch_demo(progress=False)
    prep = prepare([shared_data / "ccfbdci" / "ccfbdci.jsonl"])
    write_prepared(prep, tmp_path / "data", ratios=(0.7, 0.15, 0.15), seed=42)
    # Four training rows, one batch of four: every step sees the same rows, so the loss on
    # them must fall over three steps (a stuck or mis-masked model would not learn them).
    config = Config.model_validate({
        "data": {"dir": str(tmp_path / "data"), "train_limit": 4},
        "model": {"source": "demo"},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 4,
                     "grad_accum": 1, "lr": 1e-3, "save_steps": 3, "seed": 42},
        "eval": {"eval_steps": 3, "val_size": 4, "batch_size": 4, "at_start": False},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)
    assert summary.steps == 3
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [m["loss"] for m in lines if "loss" in m]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    evals = [m for m in lines if "eval_f1" in m]
    assert len(evals) == 1 and 0 <= evals[0]["eval_f1"] <= 1
    # Every answer of the trained model is read back, and F1 is computed over the 4 rows asked
    # for: the gold counts per label add up to those rows' entities.
    assert evals[0]["eval_parse_rate"] == 1.0
    rows = validation_subset(list(read_examples(tmp_path / "data" / "val.jsonl")), 4, 42)
    support = sum(v for k, v in evals[0].items() if k.startswith("eval_support/"))
    assert len(rows) == 4 and support == sum(len(ex.entities) for ex in rows)
    assert (tmp_path / "run" / "best" / "adapter_config.json").is_file()
