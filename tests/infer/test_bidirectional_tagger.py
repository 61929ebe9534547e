"""method.head tagger-bidirectional: the tagging head with the backbone's causal mask lifted.
Trained, reloaded, batched and exported as a user meets it, each token's tags depend on the
characters after it (a causal tagger's never do), and the exports keep that."""

import json

import pytest
import torch

from nerft.infer.predict import decoder_for
from nerft.models.base import load_model_and_tokenizer
from nerft.models.loader import load_model

SENTENCE, CHANGED = "张三在北京大学读书。", "张三在北京大学读书！"  # only the last character differs


@pytest.fixture(scope="module")
def bidirectional_run(tmp_path_factory, tagger_run, tiny_model_dir):
    from tiny import lora_tagger_steps

    _, data = tagger_run
    return lora_tagger_steps(data, tiny_model_dir, tmp_path_factory.mktemp("bi-tagger") / "run",
                             head="tagger-bidirectional")


def _first_tokens_tags(ref: str) -> list[torch.Tensor]:
    """Tag logits of the first 9 characters of SENTENCE and of CHANGED, through the loaded model."""
    decoder = decoder_for(*load_model(ref))
    _, logits = decoder.tag_logits([SENTENCE, CHANGED])
    return [x[:9] for x in logits]


def test_each_tag_sees_the_characters_after_it_and_a_causal_tagger_does_not(bidirectional_run,
                                                                            tagger_lora_run):
    same, changed = _first_tokens_tags(str(bidirectional_run))
    assert not torch.allclose(same, changed, atol=1e-6)  # the last character reaches the first
    causal_same, causal_changed = _first_tokens_tags(str(tagger_lora_run))
    assert torch.allclose(causal_same, causal_changed, atol=1e-6)


def test_padding_is_still_masked_in_a_batch(bidirectional_run):
    # Alone and batched beside a longer sentence (so padded): the same tags.
    decoder = decoder_for(*load_model(str(bidirectional_run)))
    _, alone = decoder.tag_logits([SENTENCE], batch_size=1)
    _, batched = decoder.tag_logits([SENTENCE, "联合国秘书长今天在日内瓦会见了来自北京的代表团。"], batch_size=2)
    assert torch.allclose(alone[0], batched[0], atol=1e-4)


def test_exports_keep_the_lifted_mask(bidirectional_run, tmp_path):
    from nerft.export.workflow import export_run

    texts = [SENTENCE, CHANGED, "联合国秘书长访问了日内瓦。"]
    want = decoder_for(*load_model(str(bidirectional_run))).tag_logits(texts)[1]
    adapter = export_run(bidirectional_run, tmp_path / "adapter")
    merged = export_run(bidirectional_run, tmp_path / "merged", merge=True, dtype="float32")
    assert merged.parity.identical_answers == merged.parity.sentences
    for out in (adapter.out, merged.out):
        assert json.loads((out / "task.json").read_text())["head"] == "tagger-bidirectional"
        got = decoder_for(*load_model(str(out))).tag_logits(texts)[1]
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(want, got))
    # The merged weights say it themselves: loading them as a tagger lifts the mask again.
    config = json.loads((merged.out / "config.json").read_text())
    assert config["is_causal"] is False
    tags = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    model, _ = load_model_and_tokenizer(str(merged.out), tags=tags)
    assert not any(getattr(m, "is_causal", False) for m in model.modules())
    card = (merged.out / "README.md").read_text()
    assert "method.head tagger-bidirectional" in card and "causal mask is lifted" in card
    assert "token-classification," in card and "by-generation" not in card


def test_a_generating_model_stays_causal(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), dtype="float32")
    assert all(m.is_causal for m in model.modules() if hasattr(m, "is_causal"))
