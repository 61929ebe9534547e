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
    from tiny import qwen_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def gbnf_accepts(qwen_tokenizer):
    """`accepts(grammar, answer)`: whether a GBNF grammar takes the whole answer, token by
    token, with the real Qwen tokenizer (llguidance, the grammar engine vLLM uses)."""
    import llguidance
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(qwen_tokenizer)

    def accepts(grammar: str, answer: str) -> bool:
        matcher = llguidance.LLMatcher(lltok, llguidance.grammar_from("gbnf", grammar))
        assert not matcher.is_error(), matcher.get_error()
        ids = qwen_tokenizer(answer, add_special_tokens=False)["input_ids"]
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    return accepts


@pytest.fixture(scope="session")
def tiny_model_dir():
    """A tiny randomly initialised Qwen2 saved like a real model folder."""
    from tiny import tiny_qwen2

    return tiny_qwen2()


TINY_RUN_LABELS = ["地点", "人名", "地理实体", "组织"]
@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory, tiny_model_dir):
    """What `nerft train` leaves behind, on the tiny model: config.yaml, run.json, a LoRA adapter
    with a non-zero B in best/ (so it really changes the model), its scores, a validation split."""
    import hashlib
    import json

    import yaml
    from tiny import TINY_RUN_VAL, save_random_lora

    run = tmp_path_factory.mktemp("tiny-run")
    data = run.parent / (run.name + "-data")
    data.mkdir()
    (data / "val.jsonl").write_text("".join(
        json.dumps({"id": f"val:{i}", "text": t, "entities": []}, ensure_ascii=False) + "\n"
        for i, t in enumerate(TINY_RUN_VAL)), encoding="utf-8")
    save_random_lora(tiny_model_dir, run / "best")
    (run / "best" / "scores.json").write_text(json.dumps({"step": 10, "eval_f1": 0.25}), encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"dir": str(data)}, "model": {"source": str(tiny_model_dir), "dtype": "float32"},
         "method": {"kind": "lora", "r": 4, "alpha": 8}}), encoding="utf-8")
    (run / "run.json").write_text(json.dumps(
        {"labels": TINY_RUN_LABELS, "data_dir": str(data), "seed": 42,
         "data_sha256": {"val.jsonl": hashlib.sha256((data / "val.jsonl").read_bytes()).hexdigest()}}, ensure_ascii=False), encoding="utf-8")
    return run


def pytest_configure(config):
    # `make test` runs two xdist workers on a 2-core machine: one thread each (and in every
    # process a test starts) keeps them from fighting over the cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def _shared_by_workers(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the base temp folder itself when the
    suite runs in one process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, shared_data):
    """A tiny Qwen2 fully fine-tuned until it knows 30 real sentences by heart (as in
    tests/train/test_train_e2e.py): (run dir, its data folder, its untrained base model).
    val.jsonl and test.jsonl hold the training rows, so it scores near 1.0 on them.
    Trained once per session: under `make test` by a background process from the start
    (`pytest_sessionstart`), else by the first worker to need it; the others wait and share."""
    root = _shared_by_workers(tmp_path_factory) / "learned"
    learned_run_ready(root, shared_data)
    from tiny import tiny_qwen2

    return root / "run", root / "data", tiny_qwen2(layers=2, hidden=128, heads=4, kv_heads=2,
                                                   intermediate=256)


def learned_run_ready(root: Path, shared_data: Path) -> None:
    """ROOT/run trained (once: whoever takes the lock first trains, the others wait)."""
    from filelock import FileLock

    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            _train_learned_run(root, shared_data)
            (root / "done").write_text("ok\n")


# `make test` sets this: the suite's two workers would otherwise reach the learned run's tests
# together, and one sat idle for two minutes while the other trained it.
PREBUILD = "NERFT_TEST_PREBUILD"
_prebuild: list = []


def pytest_sessionstart(session):
    """Under `make test` (the xdist controller only): train the learned run in a background
    process, one thread, while the workers run the tests that do not need it."""
    import subprocess
    import sys

    config = session.config
    if os.environ.get(PREBUILD) != "1" or hasattr(config, "workerinput"):
        return
    if not getattr(config.option, "numprocesses", None):
        return
    root = config._tmp_path_factory.getbasetemp() / "learned"
    script = ("import sys; from pathlib import Path; sys.path[:0] = ['tests', '.']; import torch; "
              "torch.set_num_threads(1); from conftest import learned_run_ready; "
              f"learned_run_ready(Path({str(root)!r}), Path({str(shared_data_dir())!r}))")
    log = open(str(root) + ".log", "w", encoding="utf-8")
    _prebuild.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))


def pytest_sessionfinish(session):
    for process in _prebuild:  # a run of a few files may end before it does
        process.terminate()
        process.wait()


def _memorised_rows(root: Path, shared_data: Path) -> Path:
    """ROOT/data: 30 short ccfbdci sentences with entities as train, val and test alike (a fresh
    ROOT: a worker killed mid-training left it half done)."""
    import json
    import shutil

    from nerft.data.example import write_jsonl
    from nerft.data.prepare import prepare

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    prep = prepare([shared_data / "ccfbdci" / "ccfbdci.jsonl"])
    rows = [ex for ex in prep.splits["train"] if ex.entities and len(ex.text) <= 40][:30]
    data = root / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        write_jsonl(data / name, (ex.to_dict() for ex in rows))
    (data / "stats.json").write_text(json.dumps({"labels": prep.labels}, ensure_ascii=False))
    return data


def _train_learned_run(root: Path, shared_data: Path) -> None:
    from nerft.config import Config
    from tiny import tiny_qwen2
    from nerft.train.workflow import train

    data = _memorised_rows(root, shared_data)
    base = tiny_qwen2(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256)
    config = Config.model_validate({
        "data": {"dir": str(data)},
        "model": {"source": str(base)},
        "method": {"kind": "full"},
        "training": {"output_dir": str(root / "run"), "max_steps": 150, "batch_size": 10,
                     "grad_accum": 1, "lr": 5e-3, "warmup_ratio": 0.05, "save_steps": 1000},
        # at_start off: a random model's step-0 answers run to their budgets (about a minute);
        # test_compare.py scores the untrained base on these rows instead
        "eval": {"eval_steps": 150, "val_size": 30, "batch_size": 30, "at_start": False},
        "tracking": {"swanlab": "off"},
    })
    summary = train(config)
    assert summary.best_f1 >= 0.9, "the tiny model did not learn its sentences"


@pytest.fixture(scope="session")
def tagger_run(tmp_path_factory, shared_data):
    """A tiny Qwen2 with the tagging head (method.head tagger), fully fine-tuned until it tags 30
    real ccfbdci sentences by heart: (run dir, its data folder). val.jsonl and test.jsonl hold
    the training rows. Trained once per session. (LoRA on a random tiny backbone learns too
    little to memorise: the LoRA path is `tagger_lora_run`.)"""
    from filelock import FileLock

    root = _shared_by_workers(tmp_path_factory) / "tagger"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            _train_tagger_run(root, shared_data)
            (root / "done").write_text("ok\n")
    return root / "run", root / "data"


def _train_tagger_run(root: Path, shared_data: Path) -> None:
    from rich.console import Console

    from nerft.config import Config
    from tiny import tiny_qwen2
    from nerft.train.workflow import train

    data = _memorised_rows(root, shared_data)
    base = tiny_qwen2(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256)
    config = Config.model_validate({
        "data": {"dir": str(data)},
        "model": {"source": str(base), "dtype": "float32"},
        "method": {"kind": "full", "head": "tagger"},
        # 120 steps: at 60 it reached 0.88 with the default threads but 0.82 with one thread
        # a worker (`make test`'s xdist), where sums run in another order.
        "training": {"output_dir": str(root / "run"), "max_steps": 120, "batch_size": 10,
                     "grad_accum": 1, "lr": 5e-3, "warmup_ratio": 0.05, "save_steps": 1000},
        "eval": {"eval_steps": 30, "val_size": 30, "batch_size": 30},
        "tracking": {"swanlab": "off"},
    })
    console = Console(stderr=True, record=True)
    summary = train(config, console=console)
    (root / "train-output.txt").write_text(console.export_text())
    assert summary.best_f1 >= 0.85, f"the tiny tagger did not learn its sentences ({summary.best_f1})"


@pytest.fixture(scope="session")
def tagger_lora_run(tmp_path_factory, tagger_run, tiny_model_dir):
    """A few LoRA steps with method.head tagger on `tagger_run`'s rows (not enough to learn;
    enough to move the head): its adapter carries the head (PEFT modules_to_save)."""
    from tiny import lora_tagger_steps

    _, data = tagger_run
    return lora_tagger_steps(data, tiny_model_dir, tmp_path_factory.mktemp("tagger-lora") / "run")
