"""method.head tagger: BIO tags from character spans, training through `nerft train`, and the
run loading back as a tagger (LoRA on the backbone, the head trained in full and saved)."""

import json

import pytest
import torch
import yaml
from safetensors import safe_open

from nerft.data.example import Span, read_examples
from nerft.task.bio import TagReport, spans_from_tags, tag_names, token_tags, tokenize_sentences

LABELS = ("地点", "人名")
# Hand-written: Qwen's BPE merges 在上海 into one token and splits 法国外长 as 法 + 国外 + 长.
SENTENCE = "国务院总理李强今天在上海会见了法国外长。"
GOLD = [Span(5, 7, "人名", "李强"), Span(10, 12, "地点", "上海"), Span(15, 17, "地点", "法国")]


def test_every_chinese_character_is_its_own_piece_so_no_entity_edge_falls_inside_a_token(qwen_tokenizer):
    plain = qwen_tokenizer(SENTENCE, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert (9, 12) in plain and (16, 18) in plain  # 在上海, 国外: the edges a plain tokenisation hides
    sentence = tokenize_sentences(qwen_tokenizer, [SENTENCE])[0]
    assert sentence.offsets == [(i, i + 1) for i in range(len(SENTENCE))]
    report = TagReport()
    tags = token_tags(sentence, GOLD, LABELS, report, "s1")
    names = tag_names(LABELS)
    assert [names[t] for t in tags[5:7]] == ["B-人名", "I-人名"] and names[tags[9]] == "O"
    assert report.entities == 3 and report.straddling == [] and report.lost == []
    assert spans_from_tags(SENTENCE, sentence, tags, LABELS) == GOLD


def test_an_edge_inside_an_ascii_word_is_counted_and_the_span_widened(qwen_tokenizer):
    text = "他买了 iPhone 手机"
    sentence = tokenize_sentences(qwen_tokenizer, [text])[0]
    assert text[slice(*sentence.offsets[4])] == "iPhone"  # one piece, one token
    report = TagReport()
    phone = Span(6, 10, "地点", "hone")
    both = [Span(4, 5, "人名", "i"), phone]
    tags = token_tags(sentence, both, LABELS, report, "s2")
    assert report.straddling == ["s2: i"] and report.lost == ["s2: hone"]  # one token, one tag
    assert spans_from_tags(text, sentence, tags, LABELS) == [Span(4, 10, "人名", "iPhone")]
    assert "1 with an edge inside a token" in report.line() and "1 sharing" in report.line()


def test_tags_to_spans_reads_an_i_without_its_b_and_a_label_change_as_new_entities(qwen_tokenizer):
    sentence = tokenize_sentences(qwen_tokenizer, ["张三李四"])[0]
    names = tag_names(LABELS)
    tags = [names.index(t) for t in ("I-人名", "I-人名", "I-地点", "O")]
    assert spans_from_tags("张三李四", sentence, tags, LABELS) == [
        Span(0, 2, "人名", "张三"), Span(2, 3, "地点", "李")]
    assert tokenize_sentences(qwen_tokenizer, [""])[0].ids == []


def test_a_tagger_run_learns_and_says_what_does_not_apply(tagger_run):
    run, data = tagger_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_f1"] >= 0.85
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["head"] == "tagger"
    said = (run.parent / "train-output.txt").read_text()
    assert "constrained decoding (eval.constrained) do not apply" in said
    rows = list(read_examples(data / "train.jsonl"))
    assert f"tagger: {sum(len(ex.entities) for ex in rows)} entities as BIO token tags" in said
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForTokenClassification"]
    assert list(config["id2label"].values()) == tag_names(tuple(json.loads((run / "run.json").read_text())["labels"]))


def test_nerft_eval_scores_a_tagger_run_with_exact_offsets(tagger_run):
    from nerft.eval.workflow import evaluate_model, load_split

    run, data = tagger_run
    examples, labels = load_split(data, "test", None)
    ev = evaluate_model(str(run), examples, labels, name="tagger")
    assert ev.result.scores["strict"].micro.f1 >= 0.85
    for row in ev.predictions:
        for e in row["entities"]:
            assert row["text"][e["start"]:e["end"]] == e["text"]


def test_lora_tagger_saves_its_trained_head_with_the_adapter_and_reloads_it(tagger_lora_run, tiny_model_dir):
    from transformers import AutoModelForTokenClassification

    from nerft.infer.predict import decoder_for
    from nerft.infer.tagger import TokenTagger
    from nerft.models.loader import load_model

    best = tagger_lora_run / "best"
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and "score" in adapter["modules_to_save"]
    with safe_open(str(best / "adapter_model.safetensors"), "pt") as f:
        head = [k for k in f.keys() if ".score." in k and k.endswith("weight")]
        assert head, "the head is not in the adapter"
        saved = f.get_tensor(head[0])
    loaded = load_model(str(tagger_lora_run))
    decoder = decoder_for(*loaded)
    assert isinstance(decoder, TokenTagger)
    assert torch.equal(loaded.model.score.weight, saved)  # merged: the trained head, not a new one
    kept = load_model(str(tagger_lora_run), merge=False)
    texts = ["张三在北京大学读书。", "联合国秘书长访问了日内瓦。"]
    _, a = decoder.tag_logits(texts)
    _, b = decoder_for(*kept).tag_logits(texts)
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b))
    fresh = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=saved.shape[0])
    assert not torch.equal(fresh.score.weight, saved)


def test_a_tagger_refuses_other_labels_and_init_from(tagger_lora_run, tagger_run):
    from nerft.config import Config
    from nerft.models.loader import InferenceError, load_model

    with pytest.raises(InferenceError, match="a tagger's labels are its head's outputs"):
        load_model(str(tagger_lora_run), labels=["人名"])
    _, data = tagger_run
    with pytest.raises(ValueError, match="init_from is not supported with method.head tagger"):
        Config.model_validate({"init_from": str(tagger_lora_run), "data": {"dir": str(data)},
                               "model": {"source": "demo"}, "method": {"head": "tagger"}})


def test_freeze_and_lora_train_the_new_head(tiny_model_dir):
    from nerft.config import MethodConfig
    from nerft.models.base import load_model_and_tokenizer
    from nerft.train.method import apply_method

    tags = tag_names(LABELS)
    for method in (MethodConfig(kind="freeze", head="tagger", top_k_layers=1),
                   MethodConfig(kind="lora", head="tagger", target_modules=["q_proj"])):
        model, _ = load_model_and_tokenizer(str(tiny_model_dir), tags=tags)
        model, _ = apply_method(model, method)
        trains = {n: p.requires_grad for n, p in model.named_parameters() if "score" in n}
        # LoRA: PEFT keeps the original head frozen and trains its copy (modules_to_save)
        assert {n for n, t in trains.items() if t} == {n for n in trains if "original_module" not in n}, trains
        assert not any(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" in n)
