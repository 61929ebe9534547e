import pytest
from transformers import AutoModelForCausalLM

from nerft.config import MethodConfig
from nerft.train.method import apply_method


@pytest.fixture
def model(tiny_model_dir):
    from tiny import tiny_qwen2

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2(layers=4))


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_on_all_projections(model):
    peft_model, report = apply_method(model, MethodConfig(kind="lora", lora_r=4))
    names = trainable_names(peft_model)
    assert names and all("lora_" in n for n in names)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{proj}.lora_A" in n for n in names)
    assert 0 < report.trainable < report.total and "trainable parameters" in str(report)


def test_lora_top_k_layers_only(model):
    peft_model, _ = apply_method(model, MethodConfig(kind="lora", top_k_layers=1))
    layers = {n.split("layers.")[1].split(".")[0] for n in trainable_names(peft_model)}
    assert layers == {"3"}


def test_dora_adds_magnitude_vectors(model):
    peft_model, _ = apply_method(model, MethodConfig(kind="dora", target_modules=["q_proj"]))
    assert any("lora_magnitude_vector" in n for n in trainable_names(peft_model))


def test_freeze_trains_top_blocks_and_named_modules(model):
    frozen, report = apply_method(model, MethodConfig(kind="freeze", top_k_layers=2,
                                                      trainable_modules=["model.norm"]))
    names = trainable_names(frozen)
    assert names and all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm")) for n in names)
    assert "model.norm.weight" in names and report.trainable < report.total


def test_bad_method_configs_are_clear(model):
    with pytest.raises(ValueError, match="needs method.top_k_layers"):
        apply_method(model, MethodConfig(kind="freeze"))
    with pytest.raises(ValueError, match="only 4 layers"):
        apply_method(model, MethodConfig(kind="lora", top_k_layers=9))
