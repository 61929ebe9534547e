"""Every verb turns a user's mistake into one line on stderr and exit code 2, no traceback."""

import json
import os
import subprocess
import sys

import pytest


def nerft(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "nerft", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    row = {"id": "1", "text": "张三在北京。", "entities": [{"start": 0, "end": 2, "label": "人名", "text": "张三"}]}
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        (folder / name).write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("source", ["./no-such-model", "no-such-org/no-such-model", "model.bin"])
def test_train_with_a_bad_model_source(tmp_path, data, source):
    cfg = tmp_path / "cfg.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"data: {{dir: {data}}}\nmodel: {{source: {source}}}\n"
                   f"training: {{output_dir: {run}}}\ntracking: {{swanlab: 'off'}}\n")
    rc, err = nerft("train", cfg, cwd=tmp_path)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith("error:") and "Traceback" not in err
    assert not (run / "config.yaml").exists()  # nothing left that blocks the corrected command


@pytest.mark.parametrize("args", [
    ["eval", "./no-such-run", "--data", "{data}"],
    ["eval", "demo", "--data", "{data}/missing"],
    ["predict", "./no-such-run", "张三在北京。"],
    ["data", "prepare", "{data}/missing.jsonl", "--out", "{data}/out"],
    ["train", "{data}/missing.yaml"],
])
def test_each_verb_reports_mistakes_in_one_line(data, args):
    rc, err = nerft(*[a.format(data=data) for a in args])
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith("error:"), err
