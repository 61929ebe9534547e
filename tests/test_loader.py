"""`nerft.models.loader.load_model`: one loader for a run folder, an adapter export, a merged export
and a model source, each giving the same weights and task the run trained."""

import json

import pytest
import torch

from nerft.export.workflow import export_run
from nerft.models.loader import InferenceError, describe, load_model

LABELS = ("地点", "人名", "地理实体", "组织")
WEIGHT = "model.layers.0.self_attn.q_proj.weight"  # a LoRA target: the adapter changes it


@pytest.fixture(scope="module")
def exports(tiny_lora_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {"adapter": export_run(tiny_lora_run, root / "adapter").out,
            "merged": export_run(tiny_lora_run, root / "merged", merge=True).out}


@pytest.fixture(scope="module")
def run_model(tiny_lora_run):
    return load_model(str(tiny_lora_run))


def test_a_run_loads_merged_with_its_labels(run_model, tiny_model_dir):
    model, tokenizer, task = run_model
    assert task.labels == LABELS and task.answer_format == "json"
    assert not hasattr(model, "peft_config") and not model.training
    base, _, zero_shot = load_model(str(tiny_model_dir), labels=["人名"])
    assert zero_shot.labels == ("人名",)
    assert not torch.equal(model.state_dict()[WEIGHT], base.state_dict()[WEIGHT])


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_exports_load_to_the_runs_weights_and_task(exports, run_model, kind):
    model, tokenizer, task = load_model(str(exports[kind]))
    assert task == run_model.task
    assert not hasattr(model, "peft_config")
    torch.testing.assert_close(model.state_dict()[WEIGHT], run_model.model.state_dict()[WEIGHT])
    assert (describe(str(exports[kind])).adapter is not None) == (kind == "adapter")


def test_trainable_keeps_the_adapter_and_trains_only_it(tiny_lora_run):
    model, _, _ = load_model(str(tiny_lora_run), trainable=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert hasattr(model, "peft_config") and trainable
    assert all("lora_" in n for n in trainable)
    frozen, _, _ = load_model(str(tiny_lora_run), merge=False)  # the export's parity reference
    assert hasattr(frozen, "peft_config") and not frozen.training
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if "lora_" in n)


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(InferenceError, match="no such run or model folder"):
        describe(str(tmp_path / "gone"))


def test_bad_export_records_name_the_file_and_field(exports, tmp_path):
    """Duplicate or control-token labels in task.json, or an adapter export without its base,
    fail as one line naming task.json before any weights load (a traceback before)."""
    import shutil

    for kind, change, field in [
        ("merged", {"labels": ["人名", "人名"]}, "field labels"),
        ("merged", {"labels": ["<|im_end|>"]}, "field labels"),
        ("adapter", {"base_model": ""}, "field base_model"),
    ]:
        folder = tmp_path / f"{kind}-{field.split()[-1]}-{len(change.get('labels', []))}"
        shutil.copytree(exports[kind], folder)
        record = json.loads((folder / "task.json").read_text(encoding="utf-8"))
        (folder / "task.json").write_text(json.dumps({**record, **change}), encoding="utf-8")
        with pytest.raises(InferenceError, match=rf"task\.json: {field}") as caught:
            load_model(str(folder))
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_damaged_adapter_weights_are_one_line_not_the_base_model(exports, tmp_path, damage):
    """Without its weights file PEFT only warns and hands back the untrained base model, which
    would answer as if trained; a damaged file raised safetensors' own error past the CLI."""
    import shutil

    folder = tmp_path / damage
    shutil.copytree(exports["adapter"], folder)
    weights = folder / "adapter" / "adapter_model.safetensors"
    weights.unlink() if damage == "missing" else weights.write_bytes(b"\x10" * 100)
    expected = "weights .* are missing" if damage == "missing" else "weights file is damaged"
    with pytest.raises(InferenceError, match=expected):
        load_model(str(folder))
