import re
import subprocess
import sys

import pytest

from nerft.config import ConfigError, load_config


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (d / name).write_text('{"id": "1", "text": "北京", "entities": []}\n', encoding="utf-8")
    return d


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_overrides(tmp_path, data_dir):
    p = write(tmp_path, f"data: {{dir: {data_dir}}}\nmodel: {{source: demo}}\ntracking: {{swanlab: off}}\n")
    cfg = load_config(p, ["training.lr=2e-4", "method.target_modules=[q_proj]"])
    assert cfg.training.lr == 2e-4 and cfg.method.target_modules == ["q_proj"]
    assert cfg.method.lora_r == 8 and cfg.training.packing == "shared_prefix"
    assert cfg.tracking.swanlab == "off"  # YAML's bare `off` is false; still the mode
    assert load_config(p, ["training.lr=auto"]).training.lr == "auto"
    assert load_config(p, ["method.kind=dora", "training.lr=auto"]).training.lr == "auto"


@pytest.mark.parametrize("body, override, message", [
    ("training: {lrr: 1}", [], "training.lrr: unknown key"),
    ("training: {lr: fast}", [], "training.lr: should be a positive number or auto, not 'fast'"),
    ("training: {lr: 0}", [], "training.lr: should be a positive number or auto, not 0"),
    ("", ["training.lr=auto", "method.kind=full"], "training.lr auto is measured for lora/dora adapters only"),
    ("", ["method.kind=prefix"], "method.kind: Input should be"),
    ("", ["training.lr"], "is not KEY=VALUE"),
])
def test_errors_name_the_key(tmp_path, data_dir, body, override, message):
    p = write(tmp_path, f"data: {{dir: {data_dir}}}\nmodel: {{source: demo}}\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(p, override)


def test_missing_data_file_says_what_to_run(tmp_path):
    p = write(tmp_path, f"data: {{dir: {tmp_path / 'nowhere'}}}\nmodel: {{source: demo}}\n")
    with pytest.raises(ConfigError, match="train.jsonl not found; run `nerft data prepare"):
        load_config(p)


def test_cli_config_error_is_one_line_exit_2(tmp_path, data_dir):
    p = write(tmp_path, f"data: {{dir: {data_dir}}}\nmodel: {{source: demo}}\nbogus: 1\n")
    res = subprocess.run([sys.executable, "-m", "nerft", "train", str(p)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "bogus: unknown key" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, data_dir):
    """Issue 28 item 12: a config saved in GBK (a common Chinese Windows default) raised
    UnicodeDecodeError, a traceback, instead of saying what to do."""
    p = tmp_path / "c.yaml"
    p.write_bytes(f"# 训练配置\ndata: {{dir: {data_dir}}}\nmodel: {{source: demo}}\n".encode("gbk"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: not UTF-8 text \(byte \d+\); save it as UTF-8$"):
        load_config(p)
