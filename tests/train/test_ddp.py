"""Two training processes on CPU (torchrun, gloo): one writer, the same numbers as one process,
and an exact resume after kill -9.

Every run trains on 4 rows with an effective batch of 4 (2 processes x 1 row x 2 accumulation
steps, or 1 process x 2 rows x 2), so each optimizer step sees all 4 rows whatever the sampler
order: the one-process run must then give the same losses, gradient norms and adapter.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

STEPS = 6


def write_config(tmp_path, model_dir, data_dir, out, *, batch_size):
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(
        f"data: {{dir: {data_dir}, train_limit: 4}}\n"
        f"model: {{source: {model_dir}}}\n"
        f"method: {{kind: lora, lora_r: 4, lora_dropout: 0.0}}\n"
        f"training: {{output_dir: {out}, max_steps: {STEPS}, batch_size: {batch_size}, "
        f"grad_accum: 2, save_steps: 2, save_total_limit: 4, lr: 1.0e-3, num_threads: 1}}\n"
        f"eval: {{eval_steps: 3, val_size: 2, batch_size: 2, at_start: false}}\n"
        f"tracking: {{swanlab: 'off'}}\n", encoding="utf-8")
    return cfg


def nerft(*args):
    return [sys.executable, "-m", "nerft", *map(str, args)]


def lines(path):
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]


def train_lines(run):
    return [m for m in lines(run / "metrics.jsonl") if "loss" in m]


def adapter(run):
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir, prepared):
    tmp = tmp_path_factory.mktemp("ddp")
    run = tmp / "ddp"
    cfg = write_config(tmp, tiny_model_dir, prepared, run, batch_size=1)
    done = subprocess.run(nerft("train", cfg, "--nproc", 2), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


def test_two_processes_write_once_and_match_one_process(tmp_path, tiny_model_dir, prepared,
                                                        two_process_run):
    run, done = two_process_run
    assert "done" in done.stdout and done.stdout.count("done:") == 1  # rank 0 alone reports

    # Rank 0 alone wrote the run directory: every step and evaluation once.
    assert [m["step"] for m in train_lines(run)] == list(range(1, STEPS + 1))
    assert [m["step"] for m in lines(run / "metrics.jsonl") if "eval_f1" in m] == [3, 6]
    assert [p["step"] for p in lines(run / "val_predictions.jsonl")] == [3, 3, 6, 6]
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    assert (run / "best" / "adapter_config.json").is_file()
    # Each checkpoint holds both ranks' RNG states, so a resume on 2 processes is exact.
    assert {p.name for p in (run / "checkpoint-6").glob("rng_state*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}
    assert not list(run.glob(".staging*")) and not list(run.glob(".final*"))

    # One process, 2 rows x 2 accumulation: the same effective batch of 4 on the same 4 rows.
    one = tmp_path / "one"
    res = subprocess.run(nerft("train", write_config(tmp_path, tiny_model_dir, prepared, one,
                                                     batch_size=2)),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ref, got = train_lines(one), train_lines(run)
    for a, b in zip(ref, got):
        # A loss scaled by 1/world_size would halve the logged loss and the gradient norm.
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), a["step"]
    want, have = adapter(one), adapter(run)
    assert want.keys() == have.keys()
    # Summation order differs between one and two processes: float32 noise, far below the
    # lr x steps = 6e-3 that the weights moved.
    for name in want:
        assert (want[name] - have[name]).abs().max().item() < 1e-4, name


def test_kill_9_then_resume_on_two_processes(tmp_path, tiny_model_dir, prepared, two_process_run):
    ref_run, _ = two_process_run
    run = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model_dir, prepared, run, batch_size=1)
    proc = subprocess.Popen(nerft("train", cfg, "--nproc", 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "checkpoint-2").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    # kill -9 the launcher and both workers (torchrun puts each worker in its own session),
    # as a lost machine would. psutil comes with accelerate.
    import psutil

    for victim in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        os.kill(victim.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()  # it really died mid-run

    again = subprocess.run(nerft("train", cfg, "--resume", "--nproc", 2), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming from") == 1, again.stdout + again.stderr[-3000:]

    got = train_lines(run)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))  # each step once
    ref = {m["step"]: m["loss"] for m in train_lines(ref_run)}
    for m in got:
        assert m["loss"] == pytest.approx(ref[m["step"]], rel=1e-4), m["step"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "final")
