"""Backend guards: settings that would silently train wrong are refused or scaled right."""

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from nerft.config import ConfigError, load_config
from nerft.train.collate import PackedCollator, answer_only_loss
from nerft.train.trainer import NerTrainer


def test_flash_attention_with_a_4d_mask_layout_is_refused(tmp_path, prepared):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dir: {prepared}}}\nmodel: {{source: demo, attn_implementation: "
                   "flash_attention_2}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="training.packing=flat"):
        load_config(cfg)
    assert load_config(cfg, ["training.packing=flat"]).training.packing == "flat"


def test_prefix_kv_is_refused_where_it_would_lose_the_prefix(tmp_path, prepared):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dir: {prepared}}}\nmodel: {{source: demo}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_config(cfg, ["training.packing=prefix_kv", "training.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="training.packing=flat"):
        load_config(cfg, ["training.packing=prefix_kv", "model.attn_implementation=flash_attention_2"])


def test_per_example_attention_needs_sdpa(tmp_path, prepared):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dir: {prepared}}}\nmodel: {{source: demo}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="training.packed_attention=grid"):
        load_config(cfg, ["training.packed_attention=per_example", "model.attn_implementation=eager"])
    assert load_config(cfg, ["training.packed_attention=per_example"]).training.packed_attention == "per_example"


def test_prefix_kv_is_refused_with_several_processes(tmp_path, prepared, monkeypatch):
    from nerft.train import ranks, workflow
    from nerft.train.workflow import TrainError

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dir: {prepared}}}\nmodel: {{source: demo}}\n"
                   f"training: {{output_dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    monkeypatch.setattr(ranks, "start", lambda: None)
    monkeypatch.setattr(ranks, "world_size", lambda: 2)
    with pytest.raises(TrainError, match="prefix_kv runs in one process only"):
        workflow.train(load_config(cfg, ["training.packing=prefix_kv"]))
    assert not (tmp_path / "run").exists()


def test_lora_training_with_prefix_kv_follows_shared_prefix(tmp_path, tiny_model_dir, prepared):
    """Same rows, same seed, same LoRA start: the two layouts, and shared_prefix with its
    attention computed per example (training.packed_attention), compute the same gradient, so
    the logged losses of a few LoRA steps agree (and all fall); validation decodes after it."""
    import json

    from nerft.config import Config
    from nerft.train.workflow import train

    def losses(packing: str, attention: str = "grid") -> list[float]:
        run = tmp_path / f"{packing}-{attention}"
        train(Config.model_validate({
            "data": {"dir": str(prepared)}, "model": {"source": str(tiny_model_dir)},
            "method": {"kind": "lora", "lora_dropout": 0.0},
            "training": {"output_dir": str(run), "max_steps": 4, "batch_size": 4, "grad_accum": 1,
                         "lr": 5e-3, "packing": packing, "packed_attention": attention,
                         "save_steps": 1000},
            "eval": {"eval_steps": 4, "at_start": False, "val_size": 2, "batch_size": 2},
            "tracking": {"swanlab": "off"}}))
        return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in m]

    shared, cached = losses("shared_prefix"), losses("prefix_kv")
    per_example = losses("shared_prefix", "per_example")
    assert len(shared) == len(cached) == len(per_example) == 4
    assert cached == pytest.approx(shared, rel=1e-3)
    assert per_example == pytest.approx(shared, rel=1e-3)
    assert cached[-1] < cached[0] and per_example[-1] < per_example[0]
    summary = json.loads((tmp_path / "shared_prefix-per_example" / "summary.json").read_text())
    assert summary["best_step"] == 4  # validated (decoding as plain SDPA) after the last step


def test_loss_is_scaled_back_up_by_the_number_of_processes(tmp_path, tiny_model_dir, qwen_tokenizer,
                                                           monkeypatch):
    """Under DDP `num_items_in_batch` is summed over processes while gradients are averaged:
    without the scale the gradient would be 1/world_size too small."""
    from nerft.data.example import Example, Span
    from nerft.task.prompt import Task
    from nerft.train.encode import encode_examples

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    task = Task(("人名", "地点"))
    encoded, _ = encode_examples(qwen_tokenizer, task, [
        Example("a", "张三在北京。", [Span(0, 2, "人名", "张三"), Span(3, 5, "地点", "北京")])], 256)
    batch = PackedCollator("shared_prefix")(encoded)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = NerTrainer(model=model, args=args, run_dir=tmp_path)
    with torch.no_grad():
        single = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(7))
        monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
        double = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(7))
        plain, _ = answer_only_loss(model, batch, torch.tensor(7))
    assert float(single) == pytest.approx(float(plain))
    assert float(double) == pytest.approx(2 * float(plain))


def test_too_old_libraries_are_named(monkeypatch):
    from nerft import versions

    real = versions.metadata.version
    monkeypatch.setattr(versions.metadata, "version",
                        lambda name: "4.51.0" if name == "transformers" else real(name))
    (line,) = versions.too_old()
    assert line.startswith("transformers 4.51.0 is older than the 5.24")
