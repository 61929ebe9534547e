import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real corpora, read in place: NERFT_DATA, default ../shared/data beside the repo."""
    return Path(os.environ.get("NERFT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "ccfbdci" / "ccfbdci.jsonl").is_file():
        pytest.fail(f"real corpora not found at {path}; set NERFT_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen BPE tokenizer with a ChatML template (built once, cached)."""
    from nerft.tiny import qwen_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def tiny_model_dir():
    """A tiny randomly initialised Qwen2 saved like a real model folder."""
    from nerft.tiny import tiny_qwen2

    return tiny_qwen2()


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, shared_data):
    """A tiny Qwen2 fully fine-tuned until it knows 30 real sentences by heart (as in
    tests/train/test_train_e2e.py): (run dir, its data folder, its untrained base model).
    val.jsonl and test.jsonl hold the training rows, so it scores near 1.0 on them."""
    import json

    from nerft.config import Config
    from nerft.data.example import write_jsonl
    from nerft.data.prepare import prepare
    from nerft.tiny import tiny_qwen2
    from nerft.train.workflow import train

    root = tmp_path_factory.mktemp("learned")
    prep = prepare([shared_data / "ccfbdci" / "ccfbdci.jsonl"])
    rows = [ex for ex in prep.splits["train"] if ex.entities and len(ex.text) <= 40][:30]
    data = root / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        write_jsonl(data / name, (ex.to_dict() for ex in rows))
    (data / "stats.json").write_text(json.dumps({"labels": prep.labels}, ensure_ascii=False))
    base = tiny_qwen2(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256)
    config = Config.model_validate({
        "data": {"dir": str(data)},
        "model": {"source": str(base)},
        "method": {"kind": "full"},
        "training": {"output_dir": str(root / "run"), "max_steps": 150, "batch_size": 10,
                     "grad_accum": 1, "lr": 5e-3, "warmup_ratio": 0.05, "save_steps": 1000},
        "eval": {"eval_steps": 150, "val_size": 30, "batch_size": 30},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)
    assert summary.best_f1 >= 0.9, "the tiny model did not learn its sentences"
    return root / "run", data, base
