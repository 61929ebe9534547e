"""Label guidelines travel with a model: `data.guidelines` at train time puts them into the run
(run.json), its instruction, an export's task.json and what predict, eval and serve prompt with;
a run trained without them keeps the instruction nerft wrote before guidelines existed."""

import json
import subprocess
import sys

from nerft.data.guidelines import GUIDELINE_PRESETS
from nerft.infer.predict import predict
from nerft.models.loader import load_model
from nerft.task.prompt import Task


def nerft(*args):
    done = subprocess.run([sys.executable, "-m", "nerft", *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def train(tmp_path, model_dir, data_dir, name, *overrides):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"data: {{dir: {data_dir}, train_limit: 8}}\n"
        f"model: {{source: {model_dir}}}\n"
        f"method: {{kind: lora, lora_r: 4}}\n"
        f"training: {{output_dir: {tmp_path / name}, max_steps: 2, batch_size: 2, grad_accum: 1, "
        f"save_steps: 2, lr: 1.0e-3, num_threads: 1}}\n"
        f"eval: {{eval_steps: 2, val_size: 2, batch_size: 2, at_start: false}}\n"
        f"tracking: {{swanlab: 'off'}}\n", encoding="utf-8")
    rc, out = nerft("train", cfg, *overrides)
    assert rc == 0, out[-2000:]
    return tmp_path / name


ROWS = [("a", "林晓峰昨天去了云岭山。"), ("b", "临州市人民政府发布了通知。")]


def test_preset_guidelines_reach_the_run_its_export_and_the_prompt(tmp_path, tiny_model_dir, prepared):
    run = train(tmp_path, tiny_model_dir, prepared, "with", "data.guidelines=preset")

    recorded = json.loads((run / "run.json").read_text(encoding="utf-8"))["guidelines"]
    conll = GUIDELINE_PRESETS["conll"]  # People's Daily is read as conll: PER, LOC, ORG
    assert recorded["人名"]["description"] == conll["PER"]["description"]
    assert recorded["地点"]["examples"] == conll["LOC"]["examples"]
    model, tokenizer, task = load_model(str(run))
    assert conll["ORG"]["description"] in task.system_prompt
    assert task.system_prompt.startswith(Task(task.labels).system_prompt + "\n标签说明:\n")

    rc, out = nerft("export", run, "--out", tmp_path / "export")
    assert rc == 0, out[-2000:]
    record = json.loads((tmp_path / "export" / "task.json").read_text(encoding="utf-8"))
    assert record["guidelines"] == recorded and record["system_prompt"] == task.system_prompt
    exported, ex_tokenizer, ex_task = load_model(str(tmp_path / "export"))
    assert ex_task == task
    assert [d.answer for d in predict(exported, ex_tokenizer, ex_task, ROWS)] == \
        [d.answer for d in predict(model, tokenizer, task, ROWS)]


def test_a_run_without_guidelines_prompts_and_records_as_before(tmp_path, tiny_model_dir, prepared):
    run = train(tmp_path, tiny_model_dir, prepared, "without", "data.guidelines=off")

    assert "guidelines" not in json.loads((run / "run.json").read_text(encoding="utf-8"))
    _, _, task = load_model(str(run))
    assert task.guidelines == () and "标签说明" not in task.system_prompt
    rc, out = nerft("export", run, "--out", tmp_path / "export")
    assert rc == 0, out[-2000:]
    record = json.loads((tmp_path / "export" / "task.json").read_text(encoding="utf-8"))
    assert "guidelines" not in record and record["system_prompt"] == task.system_prompt


def test_an_instruction_too_long_for_max_length_says_so(tmp_path, tiny_model_dir, prepared):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dir: {prepared}, train_limit: 4, max_length: 120, guidelines: preset}}\n"
                   f"model: {{source: {tiny_model_dir}}}\n"
                   f"training: {{output_dir: {tmp_path / 'run'}, max_steps: 1, num_threads: 1}}\n"
                   f"tracking: {{swanlab: 'off'}}\n", encoding="utf-8")
    rc, out = nerft("train", cfg)
    assert rc == 2 and "Traceback" not in out
    assert "every training row is longer than data.max_length=120 tokens (the instruction alone " \
           "is" in " ".join(out.split())
