"""Fine-tuning methods: LoRA, DoRA, full fine-tuning, and layer freezing."""

from __future__ import annotations

from dataclasses import dataclass

from nerft.config import ADAPTER_KINDS, Config, MethodConfig, is_tagger
from nerft.models import packed_attention


@dataclass
class TrainableReport:
    trainable: int
    total: int

    def __str__(self) -> str:
        return (f"trainable parameters: {self.trainable:,} of {self.total:,} "
                f"({100 * self.trainable / max(self.total, 1):.3f}%)")


def num_layers(model) -> int:
    return model.config.num_hidden_layers


def top_layer_indices(model, k: int | None) -> list[int] | None:
    if k is None:
        return None
    n = num_layers(model)
    if k > n:
        raise ValueError(f"method.top_k_layers={k} but the model has only {n} layers")
    return list(range(n - k, n))


def apply_method(model, method: MethodConfig):
    """Return the model prepared for training (a PeftModel for lora/dora) and its report."""
    if method.kind in ADAPTER_KINDS:
        from peft import LoraConfig, get_peft_model

        layers = top_layer_indices(model, method.top_k_layers)
        lora = LoraConfig(
            r=method.lora_r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
            target_modules=method.target_modules, layers_to_transform=layers,
            use_dora=method.kind == "dora",
            # TOKEN_CLS: PEFT trains the new head (`score`) in full beside the adapter and
            # saves it with the adapter (modules_to_save)
            task_type="TOKEN_CLS" if is_tagger(method.head) else "CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    elif method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method.kind == "freeze":
        layers = set(top_layer_indices(model, method.top_k_layers) or [])
        head = ("score.",) if is_tagger(method.head) else ()  # a new head always trains
        if not layers and not method.trainable_modules and not head:
            raise ValueError("method.kind=freeze needs method.top_k_layers and/or "
                             "method.trainable_modules, or nothing would train")
        for name, p in model.named_parameters():
            p.requires_grad_(_in_layers(name, layers) or name.startswith(head) or
                             any(m in name for m in method.trainable_modules))
    else:
        raise ValueError(f"unknown method {method.kind!r}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError("no parameter is trainable with this method config")
    total = sum(p.numel() for p in model.parameters())
    return model, TrainableReport(trainable, total)


def _in_layers(name: str, layers: set[int]) -> bool:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1]) in layers
    return False


def per_example_attention(config: Config) -> bool:
    """Whether training computes attention one packed example at a time (shared_prefix rows)."""
    return (config.training.packing == "shared_prefix" and not is_tagger(config.method.head)
            and config.training.packed_attention == "per_example")


def training_attention(config: Config) -> str:
    """The attention implementation training runs with: the config's, or (per_example) SDPA
    one example at a time under nerft's name (nerft.models.packed_attention)."""
    if not per_example_attention(config):
        return config.model.attn_implementation
    packed_attention.register()
    return packed_attention.PER_EXAMPLE_SDPA
