"""Crash safety: kill -9 in the middle of a run, then --resume finishes it exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def write_config(tmp_path, model_dir, data_dir, out):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{dir: {data_dir}, train_limit: 48}}\n"
        f"model: {{source: {model_dir}}}\n"
        f"method: {{kind: lora, lora_r: 4}}\n"
        f"training: {{output_dir: {out}, max_steps: 10, batch_size: 4, grad_accum: 2, "
        f"save_steps: 2, save_total_limit: 3, lr: 1.0e-3}}\n"
        f"eval: {{eval_steps: 5, val_size: 2, batch_size: 2}}\n"
        f"tracking: {{swanlab: 'off'}}\n", encoding="utf-8")
    return cfg


def nerft(*args):
    return [sys.executable, "-m", "nerft", *map(str, args)]


def metric_lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prepared):
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.run(nerft("train", write_config(tmp_path, tiny_model_dir, prepared, ref_run)),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    cfg = write_config(tmp_path, tiny_model_dir, prepared, run)
    proc = subprocess.Popen(nerft("train", cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "checkpoint-4").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()  # it really died mid-run

    again = subprocess.run(nerft("train", cfg, "--resume"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr

    train_steps = [m["step"] for m in metric_lines(run) if "loss" in m]
    assert train_steps == list(range(1, 11))  # continuous, none written twice
    eval_steps = [m["step"] for m in metric_lines(run) if "eval_f1" in m]
    assert eval_steps == [0, 5, 10]
    ref_loss = {m["step"]: m["loss"] for m in metric_lines(ref_run) if "loss" in m}
    got_loss = {m["step"]: m["loss"] for m in metric_lines(run) if "loss" in m}
    # Same optimizer, scheduler, RNG and data order: the resumed steps repeat the reference.
    for step in range(5, 11):
        assert got_loss[step] == pytest.approx(ref_loss[step], rel=1e-4), step
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert (run / "final" / "adapter_config.json").is_file()
    assert not list(run.glob(".staging*"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, run / "final")  # the final adapter loads


def test_existing_run_is_not_overwritten(tmp_path, tiny_model_dir, prepared):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    res = subprocess.run(nerft("train", write_config(tmp_path, tiny_model_dir, prepared, run)),
                         capture_output=True, text=True)
    assert res.returncode == 2 and "pass --resume" in res.stderr
