"""Packing must not change the loss: every layout equals running examples one by one."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from nerft.task.prompt import Task
from nerft.train.collate import (PackedCollator, answer_only_loss, common_prefix_length,
                                 prefix_keys_values)
from nerft.train.encode import encode_examples


@pytest.fixture(scope="module")
def model_and_batch(tiny_model_dir, qwen_tokenizer, shared_data, tmp_path_factory):
    from nerft.data.prepare import prepare

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    # Random init gives near-uniform logits that hide mask mistakes; sharpen the weights so a
    # token attending to the wrong context changes the loss visibly.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    prep = prepare([shared_data / "PeoplesDaily" / "example.dev"])
    examples = [ex for ex in prep.splits["train"] if ex.entities][:6]
    task = Task(tuple(prep.labels))
    encoded, _ = encode_examples(qwen_tokenizer, task, examples, max_length=512)
    return model, encoded


def token_mean_one_by_one(model, encoded):
    total, count = 0.0, 0
    for e in encoded:
        loss, n = answer_only_loss(model, PackedCollator("none")([e]))
        total += float(loss) * int(n)
        count += int(n)
    return total / count


@pytest.mark.parametrize("layout", ["shared_prefix", "flat", "none", "prefix_kv"])
def test_packed_loss_equals_one_by_one(model_and_batch, layout):
    model, encoded = model_and_batch
    with torch.no_grad():
        reference = token_mean_one_by_one(model, encoded)
        loss, n = answer_only_loss(model, PackedCollator(layout)(encoded))
    assert n == sum(sum(l != -100 for l in e.labels) for e in encoded)
    assert abs(float(loss) - reference) < 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_examples_with_the_same_text_in_one_micro_batch(model_and_batch, attn):
    """Hand-written data can repeat a sentence; packing must still score each copy alone."""
    model, encoded = model_and_batch
    twice = [encoded[0], encoded[0]]  # the whole prompt is shared
    model.set_attn_implementation(attn)
    try:
        with torch.no_grad():
            reference = token_mean_one_by_one(model, twice)
            for layout in ("shared_prefix", "flat", "prefix_kv"):
                loss, _ = answer_only_loss(model, PackedCollator(layout)(twice))
                assert abs(float(loss) - reference) < 1e-4, layout
    finally:
        model.set_attn_implementation("sdpa")


def test_a_wrong_mask_would_be_caught(model_and_batch):
    """Guard for the test above: attention across examples does change the loss."""
    model, encoded = model_and_batch
    batch = PackedCollator("shared_prefix")(encoded)
    batch.pop("attention_mask")  # plain causal attention over the whole packed row
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        leaky, _ = answer_only_loss(model, batch)
        reference = token_mean_one_by_one(model, encoded)
    assert abs(float(leaky) - reference) > 1e-3


def test_shared_prefix_stores_the_system_turn_once(model_and_batch):
    _, encoded = model_and_batch
    p = common_prefix_length([e.input_ids for e in encoded], min(e.answer_start for e in encoded))
    assert p > 50  # the system prompt
    shared = PackedCollator("shared_prefix")(encoded)["input_ids"].shape[1]
    flat = PackedCollator("flat")(encoded)["input_ids"].shape[1]
    assert shared == flat - (len(encoded) - 1) * p


def test_answer_only_logits_give_the_full_logits_loss(model_and_batch):
    model, encoded = model_and_batch
    batch = PackedCollator("none")(encoded)
    with torch.no_grad():
        ours, _ = answer_only_loss(model, batch)
        full = model(**batch).loss  # transformers' own shifted cross-entropy on all positions
    assert abs(float(ours) - float(full)) < 1e-4


def test_gradients_match_too(model_and_batch):
    model, encoded = model_and_batch
    weight = model.model.layers[0].self_attn.q_proj.weight

    def grad_of(batch):
        model.zero_grad()
        loss, _ = answer_only_loss(model, batch, num_items=1)  # summed loss
        loss.backward()
        return weight.grad.clone()

    packed = grad_of(PackedCollator("shared_prefix")(encoded))
    separate = sum(grad_of(PackedCollator("none")([e])) for e in encoded)
    # The check is for the packing's mask and positions, not for fp32 summation order: with
    # one thread per xdist worker the two sums differ by 1.4e-5 (1e-5 held with two threads).
    assert float((packed - separate).norm() / separate.norm()) < 5e-5


def test_prefix_kv_loss_and_gradients_equal_one_by_one(model_and_batch):
    """The prefix runs once and its keys/values serve every example, padded to the longest;
    loss and gradient (also of a weight the prefix alone reaches through its keys/values)
    equal running each example on its own."""
    model, encoded = model_and_batch
    batch = PackedCollator("prefix_kv")(encoded)
    p = batch["prefix_ids"].shape[1]
    assert p > 50 and batch["input_ids"].shape == (len(encoded), max(len(e) for e in encoded) - p)
    with torch.no_grad():
        loss, n = answer_only_loss(model, batch)
        reference = token_mean_one_by_one(model, encoded)
    assert n == sum(sum(l != -100 for l in e.labels) for e in encoded)
    assert abs(float(loss) - reference) < 1e-4
    weight = model.model.layers[0].self_attn.k_proj.weight

    def grad_of(b):
        model.zero_grad()
        loss, _ = answer_only_loss(model, b, num_items=1)
        loss.backward()
        return weight.grad.clone()

    packed = grad_of(batch)
    separate = sum(grad_of(PackedCollator("none")([e])) for e in encoded)
    # The check is for the packing's mask and positions, not for fp32 summation order: with
    # one thread per xdist worker the two sums differ by 1.4e-5 (1e-5 held with two threads).
    assert float((packed - separate).norm() / separate.norm()) < 5e-5
    # guard: with the prefix's keys/values cut from the graph, the gradient differs
    with torch.no_grad():
        cut = prefix_keys_values(model, batch["prefix_ids"], len(encoded))
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "prefix_ids")}
    logits = model(**inputs, cache=cut, use_cache=False).logits[:, :-1]
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      batch["labels"][:, 1:].reshape(-1), reduction="sum").backward()
    assert float((weight.grad - separate).norm() / separate.norm()) > 1e-3


def test_per_example_attention_equals_one_by_one(model_and_batch):
    """training.packed_attention=per_example: the shared-prefix row's attention computed per
    example (nerft.models.packed_attention) gives the loss and gradients of running each
    example alone, and a key/value weight's gradient too (the prefix reaches examples only
    through its keys/values)."""
    from nerft.models.packed_attention import PER_EXAMPLE_SDPA, register

    model, encoded = model_and_batch
    batch = PackedCollator("shared_prefix", segments=True)(encoded)
    segments = batch["packed_segments"].tolist()
    assert segments[0][0] == 0 and segments[-1][1] == batch["input_ids"].shape[1]
    assert len(segments) == len(encoded) + 1
    weight = model.model.layers[0].self_attn.v_proj.weight

    def grad_of(b):
        model.zero_grad()
        loss, _ = answer_only_loss(model, b, num_items=1)
        loss.backward()
        return float(loss.detach()), weight.grad.clone()

    register()
    model.set_attn_implementation(PER_EXAMPLE_SDPA)
    try:
        loss, packed = grad_of(batch)
        with torch.no_grad():  # without the segments the same name is plain SDPA with the mask
            unsegmented, _ = answer_only_loss(model, PackedCollator("shared_prefix")(encoded), num_items=1)
        # a segment table that does not tile the row is refused, never read as another layout
        wrong = {**batch, "packed_segments": batch["packed_segments"][:-1]}
        with pytest.raises(ValueError, match="cover"):
            answer_only_loss(model, wrong)
    finally:
        model.set_attn_implementation("sdpa")
    separate = [grad_of(PackedCollator("none")([e])) for e in encoded]
    assert abs(loss - sum(l for l, _ in separate)) < 1e-3 * abs(loss)
    assert abs(float(unsegmented) - loss) < 1e-3 * abs(loss)
    reference = sum(g for _, g in separate)
    assert float((packed - reference).norm() / reference.norm()) < 5e-5
