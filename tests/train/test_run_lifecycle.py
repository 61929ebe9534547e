"""Every interruption has a way on, typed as a user would: finished, damaged, never
checkpointed, changed settings, two trainers at once."""

import json
import shutil
import subprocess
import sys

from filelock import FileLock

from nerft.atomic import replace_folder
from nerft.runs.run_dir import RunDir
from nerft.train.resume import checkpoint_problems


def write_config(tmp_path, model_dir, data_dir, out):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{dir: {data_dir}, train_limit: 16}}\n"
        f"model: {{source: {model_dir}}}\n"
        f"method: {{kind: lora, lora_r: 4}}\n"
        f"training: {{output_dir: {out}, max_steps: 4, batch_size: 2, grad_accum: 2, "
        f"save_steps: 2, save_total_limit: 3, lr: 1.0e-3, num_threads: 1}}\n"
        f"eval: {{eval_steps: 2, val_size: 2, batch_size: 2, at_start: false}}\n"
        f"tracking: {{swanlab: 'off'}}\n", encoding="utf-8")
    return cfg


def nerft(*args):
    done = subprocess.run([sys.executable, "-m", "nerft", *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def train_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_resume_finished_damaged_changed_and_never_checkpointed(tmp_path, tiny_model_dir, prepared):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model_dir, prepared, run)
    rc, out = nerft("train", cfg)
    assert rc == 0, out[-2000:]
    final = (run / "final" / "adapter_model.safetensors").read_bytes()

    # Finished: --resume changes nothing.
    rc, out = nerft("train", cfg, "--resume")
    assert rc == 0 and "already finished" in out
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == final
    assert train_steps(run) == [1, 2, 3, 4]

    # Killed after checkpoint-4 was written, and that checkpoint later damaged on disk.
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final")
    weights = run / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    # A resume may not change what is trained...
    rc, out = nerft("train", cfg, "--resume", "training.lr=0.5")
    assert rc == 2 and "training.lr" in out
    # ...but may change how fast it runs, and says so in run.json.
    rc, out = nerft("train", cfg, "--resume", "eval.batch_size=1")
    assert rc == 0, out[-2000:]
    assert "checkpoint-4" in out and "damaged" in out and "checkpoint-2" in out
    assert train_steps(run) == [1, 2, 3, 4]  # steps 3-4 again, none written twice
    info = json.loads((run / "run.json").read_text())
    assert info["resume_overrides"] == [{"eval.batch_size": 1}]
    assert "batch_size: 2" in (run / "config.yaml").read_text().split("eval:")[1]  # as started

    # No checkpoint left, but trained weights in best/ and final/: a plain start is refused
    # with the ways on, and --resume removes nothing and says how to continue from them.
    for folder in run.glob("checkpoint-*"):
        shutil.rmtree(folder)
    (run / "summary.json").unlink()
    rc, out = nerft("train", cfg)
    assert rc == 2 and "--resume" in out and "--overwrite" in out
    rc, out = nerft("train", cfg, "--resume")
    assert rc == 2 and "init_from=" in out and "nothing was removed" in out, out[-2000:]
    assert (run / "best").is_dir() and (run / "final").is_dir()
    assert (run / "damaged-checkpoint-4").is_dir()

    # Killed before any checkpoint and any evaluation: --resume starts again from step 0,
    # keeping the damaged checkpoint its earlier message said was kept.
    shutil.rmtree(run / "best")
    shutil.rmtree(run / "final")
    rc, out = nerft("train", cfg, "--resume")
    assert rc == 0 and "from step 0" in out, out[-2000:]
    assert "damaged-checkpoint-4 kept" in out
    assert train_steps(run) == [1, 2, 3, 4]
    assert (run / "final" / "adapter_config.json").is_file()
    assert (run / "damaged-checkpoint-4" / "adapter_model.safetensors").is_file()


def test_two_trainers_never_write_one_run(tmp_path, tiny_model_dir, prepared):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model_dir, prepared, run)
    run.mkdir()
    with FileLock(str(RunDir(run).lock), timeout=0):  # as a running `nerft train` holds it
        rc, out = nerft("train", cfg, "--overwrite")
    assert rc == 2 and "another `nerft train`" in out
    assert not (run / "metrics.jsonl").exists()


def test_a_checkpoint_without_its_optimizer_is_not_resumed_from(tmp_path):
    folder = tmp_path / "checkpoint-6"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    problems = checkpoint_problems(folder)
    assert "no optimizer.pt" in problems and "no rng_state.pth" in problems
    assert any("damaged" in p for p in problems)


def test_a_kill_between_the_renames_of_best_loses_nothing(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {source: demo}\n")
    (tmp_path / "run.json").write_text("{}")
    old_best = run.best
    old_best.mkdir()
    (old_best / "scores.json").write_text('{"step": 10}')
    run.best_staging.mkdir()
    (run.best_staging / "scores.json").write_text('{"step": 20}')
    # The first rename happened, then the process died.
    old_best.rename(run.best_old)
    assert run.weights() == run.best
    assert json.loads((run.best / "scores.json").read_text())["step"] == 20
    assert not run.best_old.exists()
    # A complete swap leaves one best/ and no leftovers.
    run.best_staging.mkdir()
    (run.best_staging / "scores.json").write_text('{"step": 30}')
    replace_folder(run.best, run.best_staging, run.best_old)
    assert json.loads((run.best / "scores.json").read_text())["step"] == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "best", "config.yaml", "run.json"]
